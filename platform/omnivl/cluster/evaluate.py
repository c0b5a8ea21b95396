"""The `evaluate` job: embeddings extracted over Ray Data (the model in an actor pool), metrics on the driver.

Per eval source: caption sources get image/video-text retrieval in both directions (and, for captions that
name a motion direction, the paired probe "true caption vs. the same caption with the direction reversed");
label sources get zero-shot classification with a prompt ensemble. Results go to `metrics.json` and
`report.md` (with PNG figures) in the job's output directory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omnivl import storage
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.eval import classify, report
from omnivl.eval.retrieval import bidirectional, chance_recall, ranks
from omnivl.spec.jobs import EvaluateJob


@dataclass
class Embedded:
    """Per decoded row (order arbitrary): visual and text embeddings, the row's label id and text."""

    visual_NE: np.ndarray
    text_NE: np.ndarray
    label_id_N: np.ndarray
    text_N: list[str]


def run_job(job: EvaluateJob) -> dict:
    export = resolve_export(storage.absolute(job.checkpoint))
    check_model_matches(job, export)
    out_uri = job.output or storage.join("runs", job.name)
    metrics = {"checkpoint": export, "sources": {}}
    with storage.staged_output(out_uri) as out:
        for src in job.data.sources:
            wanted = "zero_shot" if src.kind == "label" else "retrieval"
            if wanted not in job.eval.tasks:
                continue
            print(f"evaluate {src.name} ({wanted}): embedding with {export}", flush=True)
            emb = embed_with_ray(src, job.data.decode, export, job.eval.batch_size, job.eval.use_gpu)
            metrics["sources"][src.name] = evaluate_source(src, job.data.decode, export, emb, out)
        metrics["bad_input"] = bad_input_summary()
        report.write_json(metrics, out)
        (out / "report.md").write_text(report.markdown(metrics, f"Evaluation {job.name}"))
    print(f"report: {storage.join(out_uri, 'report.md')}", flush=True)
    return {"report": storage.join(out_uri, "report.md"), "metrics": strip_tables(metrics)}


def resolve_export(uri: str) -> str:
    """An export directory, or a training run directory holding one under `export/`."""
    if storage.exists(storage.join(uri, "config.json")):
        return uri
    nested = storage.join(uri, "export")
    if storage.exists(storage.join(nested, "config.json")):
        return nested
    raise FileNotFoundError(f"checkpoint: no export (config.json + model.safetensors) at {uri} or {nested}")


def check_model_matches(job: EvaluateJob, export: str) -> None:
    """The spec's `model` must describe the checkpoint; names the first mismatching field."""
    from omnivl.models.export import read_export_config

    cfg, _ = read_export_config(export)
    for field in ("size", "image_size", "num_frames", "embed_dim"):
        want, have = getattr(job.model, field), getattr(cfg, field)
        if want is not None and want != have:
            raise ValueError(f"model.{field}: the spec says {want!r} but checkpoint {export} was trained with {have!r}")


# ------------------------------------------------------------------------------------------ embedding


class EmbedActor:
    """Holds one model per actor; turns decoded batches into embeddings."""

    def __init__(self, export: str, modality: str, device: str = "cpu") -> None:
        from omnivl.models.export import load_export

        torch.set_num_threads(1)
        self.model = load_export(export, device)
        self.modality = modality

    def __call__(self, batch: dict) -> dict:
        return embed_batch(self.model, batch, self.modality)


@torch.no_grad()
def embed_batch(model, batch: dict, modality: str) -> dict:
    pixels = torch.from_numpy(np.array(batch["pixels"]))  # a copy: Ray hands out read-only buffers
    ids = torch.as_tensor(np.asarray(batch["input_ids"]))
    mask = torch.as_tensor(np.asarray(batch["attention_mask"]))
    return {"visual": model.encode_visual(pixels, modality).float().cpu().numpy(),
            "text_emb": model.encode_text(ids, mask).float().cpu().numpy(),
            "label_id": np.asarray(batch["label_id"]), "text": np.asarray(batch["text"], dtype=object)}


def embed_with_ray(src: SourceConfig, decode: DecodeConfig, export: str, batch_size: int, use_gpu: bool) -> Embedded:
    import ray.data

    from omnivl.cluster.data_pipeline import build_dataset

    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = build_dataset([src], decode, modality=src.modality, train=False, seed=0)
    ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"export": export, "modality": src.modality,
                                                           "device": "cuda" if use_gpu else "cpu"},
                        batch_size=batch_size, batch_format="numpy", num_gpus=1 if use_gpu else 0, num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1 if use_gpu else 2))
    return collect(ds.iter_batches(batch_size=None, batch_format="numpy"))


def embed_locally(src: SourceConfig, decode: DecodeConfig, export: str, batch_size: int = 32) -> Embedded:
    """The same embeddings in this process, without Ray (the reference for the Ray path)."""
    from omnivl.data.decode import RowDecoder
    from omnivl.data.manifest import read_manifest, row_batches

    model = driver_model(export)
    decoder = RowDecoder([src], decode, src.modality, train=False)
    batches = []
    for cols in row_batches(read_manifest(src), batch_size):
        decoded, _ = decoder(cols)
        if len(decoded["label_id"]):
            batches.append(embed_batch(model, decoded, src.modality))
    return collect(batches)


def collect(batches) -> Embedded:
    parts = list(batches)
    return Embedded(
        np.concatenate([b["visual"] for b in parts]), np.concatenate([b["text_emb"] for b in parts]),
        np.concatenate([b["label_id"] for b in parts]), [str(t) for b in parts for t in b["text"]],
    )


@functools.lru_cache(maxsize=2)
def driver_model(export: str):
    """The export loaded once in the driver (prompt and probe texts are embedded here, several times per source)."""
    from omnivl.models.export import load_export

    return load_export(export)


@functools.lru_cache(maxsize=2)
def driver_tokenizer(name: str):
    from omnivl.data.text import load_tokenizer

    return load_tokenizer(name)


@torch.no_grad()
def embed_texts(export: str, decode: DecodeConfig, texts: list[str]) -> np.ndarray:
    from omnivl.data.text import tokenize

    model = driver_model(export)
    ids, mask = tokenize(driver_tokenizer(decode.tokenizer), texts, decode.text_max_length)
    return model.encode_text(torch.as_tensor(ids), torch.as_tensor(mask)).numpy()


# ------------------------------------------------------------------------------------------ metrics


def evaluate_source(src: SourceConfig, decode: DecodeConfig, export: str, emb: Embedded, out: Path) -> dict:
    if src.kind == "label":
        return zero_shot(src, decode, export, emb, out)
    return retrieval(src, decode, export, emb, out)


def retrieval(src: SourceConfig, decode: DecodeConfig, export: str, emb: Embedded, out: Path) -> dict:
    """Items are distinct media files; a caption matches the item its manifest row points at."""
    from omnivl.data.manifest import read_manifest
    from omnivl.data.text import label_id_for_pair

    uri_of = {label_id_for_pair(r.source, r.row_index): r.uri for r in read_manifest(src)}
    items: dict[str, int] = {}
    visual_rows = []
    text_to_item = []
    for n, lid in enumerate(emb.label_id_N):
        uri = uri_of[int(lid)]
        if uri not in items:
            items[uri] = len(items)
            visual_rows.append(n)
        text_to_item.append(items[uri])
    visual = emb.visual_NE[visual_rows]
    sim_VT = visual @ emb.text_NE.T
    res = bidirectional(sim_VT, text_to_item)
    kind = src.modality
    table = {}
    for direction, label in (("text_to_visual", f"text->{kind}"), ("visual_to_text", f"{kind}->text")):
        for k in ("R@1", "R@5", "R@10"):
            gallery = len(items) if direction == "text_to_visual" else len(text_to_item)
            table[f"{label} {k}"] = (res[direction][k], chance_recall(gallery, 1, int(k[2:])))
    probe = direction_probe(emb, decode, export, src) if src.modality == "video" else None
    if probe is not None:
        table["direction probe: full caption, true vs reversed (%)"] = (probe["caption"], 50.0)
        table["direction probe: motion only, true vs reversed (%)"] = (probe["motion"], 50.0)
    fig = report.plot_recall_curve(
        {f"text->{kind}": ranks(sim_VT.T, [{v} for v in text_to_item]).tolist()},
        len(items), out / f"{src.name}_recall.png", f"{src.name}: recall@K")
    return {"modality": src.modality, "kind": src.kind, "rows": len(text_to_item), "items": len(items),
            "retrieval": res, "table": table, "figures": [fig.name]}


def direction_probe(emb: Embedded, decode: DecodeConfig, export: str, src: SourceConfig) -> dict | None:
    """Does the model tell a caption from the same caption with the motion reversed? (chance 50%)

    'caption': the item's own caption vs. the same caption reversed. On held-out (colour, shape, direction)
    combinations this is biased by the text prior: the reversed caption may be a combination seen in training.
    'motion': the same comparison on captions that say nothing but the motion ("a video of something moving
    left" vs "... right", the modality's first prompt template), which isolates the temporal path."""
    from omnivl.data.config import DEFAULT_TEMPLATES

    rows, alts, motion, motion_alt = [], [], [], []
    template = (src.templates or DEFAULT_TEMPLATES[src.modality])[0]
    for n, text in enumerate(emb.text_N):
        alt = classify.swap_direction(text)
        direction = classify.direction_of(text)
        if alt is None or direction is None:
            continue
        rows.append(n)
        alts.append(alt)
        motion.append(template.format(f"moving {direction}"))
        motion_alt.append(template.format(f"moving {classify.OPPOSITE[direction]}"))
    if not rows:
        return None
    visual = emb.visual_NE[rows]
    texts = embed_texts(export, decode, alts + motion + motion_alt)
    n = len(rows)
    return {"caption": classify.paired_choice_accuracy(visual, emb.text_NE[rows], texts[:n]),
            "motion": classify.paired_choice_accuracy(visual, texts[n:2 * n], texts[2 * n:])}


def zero_shot(src: SourceConfig, decode: DecodeConfig, export: str, emb: Embedded, out: Path) -> dict:
    from omnivl.data.manifest import read_manifest
    from omnivl.data.text import label_id_for_class

    classes = sorted({" ".join(r.label.split()) for r in read_manifest(src) if r.label.strip()})
    index_of = {label_id_for_class(c): i for i, c in enumerate(classes)}
    templates = src.prompt_templates()
    prompts = [t.format(c) for c in classes for t in templates]
    prompt_PE = embed_texts(export, decode, prompts).reshape(len(classes), len(templates), -1)
    class_CE = np.stack([classify.ensemble(p) for p in prompt_PE])
    truth = [index_of[int(l)] for l in emb.label_id_N]
    acc = classify.topk_accuracy(emb.visual_NE, class_CE, truth)
    matrix = classify.confusion(emb.visual_NE, class_CE, truth)
    fig = report.plot_confusion(matrix, classes, out / f"{src.name}_confusion.png", f"{src.name}: zero-shot")
    chance = 100.0 / len(classes)
    table = {"zero-shot top1": (acc["top1"], chance),
             "zero-shot top5": (acc["top5"], min(100.0, 5 * chance))}
    return {"modality": src.modality, "kind": src.kind, "rows": len(truth), "classes": classes,
            "accuracy": acc, "table": table, "figures": [fig.name]}


def bad_input_summary() -> dict:
    from omnivl.cluster.data_pipeline import bad_input_report

    try:
        return bad_input_report()
    except ValueError:  # no dataset was decoded in this driver
        return {}


def strip_tables(metrics: dict) -> dict:
    """The summary returned to the pipeline: headline numbers with their chance levels."""
    return {name: {k: {"value": round(v, 2), "chance": round(c, 2)} for k, (v, c) in m["table"].items()}
            for name, m in metrics["sources"].items()}
