"""The `evaluate` job: model inference over Ray Data (the model in an actor pool, on GPU with `eval.use_gpu`),
metrics on the driver.

Per eval source, the tasks of `eval.tasks` that apply to its kind (`omnivl.eval.config.TASK_KINDS`):
  text sources   retrieval both ways (contrastive, then the top `rerank_k` re-ranked by the matching head;
                 for videos also the motion-direction probe) and captioning (BLEU-4, CIDEr, METEOR with Java)
  label sources  zero-shot classification with a prompt ensemble, and a linear probe on frozen features
                 (trained on `eval.probe_train[source]`, scored on the source)
  qa sources     question answering: the generation decoder answers `question: {q} answer:`; exact match
Results go to `metrics.json`, `report.md` (every number beside its chance level), PNG figures and
`<source>_predictions.jsonl` (generated captions/answers) in the job's output directory.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omnivl import console, storage
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.eval import classify, inference, report
from omnivl.eval.config import TASK_KINDS, EvalConfig, source_issues
from omnivl.eval.retrieval import chance_recall, items_and_captions, ranks, recall_metrics, rerank, top_k_candidates
from omnivl.spec.jobs import EvaluateJob
from omnivl.tracking.session import log_evaluation


@dataclass
class Embedded:
    """Per decoded row (order arbitrary): visual embeddings, frozen visual features, text embeddings, the row's
    label id, text and manifest row key."""

    visual_NE: np.ndarray
    text_NE: np.ndarray
    label_id_N: np.ndarray
    text_N: list[str]
    row_key_N: list[str]
    features_ND: np.ndarray | None = None
    generated: dict[str, str] | None = None  # row key -> caption, when captioning rode along on this pass


@dataclass
class Context:
    """What every task of one job needs besides its source."""

    cfg: EvalConfig
    decode: DecodeConfig
    export: str
    out: Path

    @property
    def device(self) -> str:
        return "cuda" if self.cfg.use_gpu else "cpu"


def run_job(job: EvaluateJob) -> dict:
    issues = source_issues(job.eval, job.data.sources)
    if issues:  # the loader reports these too; jobs built in code (finetune's held-out eval) land here
        raise ValueError("; ".join(str(i) for i in issues))
    export = resolve_export(storage.absolute(job.checkpoint))
    check_model_matches(job, export)
    out_uri = storage.absolute(job.output or storage.join("runs", job.name))
    metrics = {"checkpoint": export, "tasks": list(job.eval.tasks), "sources": {}}
    with storage.staged_output(out_uri) as out:
        ctx = Context(job.eval, job.data.decode, export, out)
        for src in job.data.sources:
            tasks = tasks_for(src, job.eval)
            if tasks:
                src = src.model_copy(update={"manifest": storage.absolute(src.manifest)})
                metrics["sources"][src.name] = evaluate_source(src, tasks, ctx)
        metrics["bad_input"] = bad_input_summary()
        report.write_json(metrics, out)
        (out / "report.md").write_text(report.markdown(metrics, f"Evaluation {job.name}"))
    console.say(f"report: {storage.join(out_uri, 'report.md')}")
    headline = strip_tables(metrics)
    # into the trackers of the training run that made `export`, when it has them (omnivl.tracking.session)
    log_evaluation(job.tracking, export=export, out_uri=out_uri, name=job.name, params=job.to_dict(),
                   summary=headline)
    return {"report": storage.join(out_uri, "report.md"), "metrics": headline}


def tasks_for(src: SourceConfig, cfg: EvalConfig) -> list[str]:
    """The tasks of `cfg` that evaluate `src` (the linear probe only sources with a train split named)."""
    return [t for t in cfg.tasks if src.kind in TASK_KINDS[t] and (t != "linear_probe" or src.name in cfg.probe_train)]


def resolve_export(uri: str) -> str:
    """An export directory, or a training run directory holding one under `export/`."""
    if storage.exists(storage.join(uri, "config.json")):
        return uri
    nested = storage.join(uri, "export")
    if storage.exists(storage.join(nested, "config.json")):
        return nested
    raise FileNotFoundError(f"checkpoint: no export (config.json + model.safetensors) at {uri} or {nested}")


def check_model_matches(job: EvaluateJob, export: str) -> None:
    """The spec's `model` must describe the checkpoint; raises ValueError naming the first mismatching field."""
    from omnivl.models.export import read_export_config

    cfg, _ = read_export_config(export)
    for field in ("size", "image_size", "num_frames", "embed_dim", "tubelet"):
        want, have = getattr(job.model, field), getattr(cfg, field)
        if want is not None and want != have:
            raise ValueError(f"model.{field}: the spec says {want!r} but checkpoint {export} was trained with {have!r}")


def evaluate_source(src: SourceConfig, tasks: list[str], ctx: Context) -> dict:
    """Run `tasks` on one source; returns its metrics entry (per-task numbers, report table, notes, figures)."""
    entry = {"modality": src.modality, "kind": src.kind, "rows": 0, "tasks": {}, "table": {}, "notes": [],
             "figures": []}
    emb = None
    if any(t in ("retrieval", "zero_shot", "linear_probe") for t in tasks):
        # Captions are generated in the same pass: the media are decoded and the model loaded once.
        caption = ctx.cfg.captioning if "captioning" in tasks else None
        console.say(f"evaluate {src.name}: embedding{' + captioning' if caption else ''} with {ctx.export}")
        emb = embed_with_ray(src, ctx.decode, ctx.export, ctx.cfg.batch_size, ctx.cfg.use_gpu, caption)
        entry["rows"] = len(emb.label_id_N)
    for task in tasks:
        console.say(f"evaluate {src.name}: {task}")
        result = TASKS[task](src, ctx, emb)
        entry["rows"] = max(entry["rows"], result.pop("rows", 0))
        entry["table"].update(result.pop("table", {}))
        entry["notes"] += result.pop("notes", [])
        entry["figures"] += result.pop("figures", [])
        entry["tasks"][task] = result
    if "retrieval" in entry["tasks"]:  # kept at the top level: the e2e test and older readers look here
        entry["retrieval"] = entry["tasks"]["retrieval"]["contrastive"]
    return entry


# ------------------------------------------------------------------------------------------ Ray actors


class _ModelActor:
    torch_threads = 1

    def __init__(self, export: str, modality: str, device: str = "cpu") -> None:
        from omnivl.models.export import load_export

        torch.set_num_threads(self.torch_threads)
        self.model = load_export(export, device)
        self.modality = modality


class EmbedActor(_ModelActor):
    """Turns decoded batches into embeddings and frozen features, and with `caption` settings also writes a
    caption per row (column `generated`) from the same decoded pixels."""

    def __init__(self, export: str, modality: str, device: str = "cpu", tokenizer: str | None = None,
                 caption: dict | None = None) -> None:
        super().__init__(export, modality, device)
        self.caption = _Generator(tokenizer, caption) if caption is not None else None

    def __call__(self, batch: dict) -> dict:
        out = inference.embed_batch(self.model, batch, self.modality)
        if self.caption is not None:
            out["generated"] = self.caption(self.model, batch, self.modality, answer=False)["generated"]
        return out


class _Generator:
    """A tokenizer and generation settings, applied to decoded batches."""

    def __init__(self, tokenizer: str, settings: dict) -> None:
        from omnivl.data.text import load_tokenizer
        from omnivl.eval.config import GenerationSettings

        self.tokenizer = load_tokenizer(tokenizer)
        self.settings = GenerationSettings.model_validate(settings)

    def __call__(self, model, batch: dict, modality: str, answer: bool) -> dict:
        return inference.generate_batch(model, batch, modality, self.tokenizer, self.settings, answer)


class MatchActor(_ModelActor):
    """Scores (visual row, text) pairs with the matching head; `pairs[label_id]` lists text indices."""

    def __init__(self, export: str, modality: str, device: str, pairs: dict, text_ids, text_mask) -> None:
        super().__init__(export, modality, device)
        self.pairs, self.text_ids, self.text_mask = pairs, np.asarray(text_ids), np.asarray(text_mask)

    def __call__(self, batch: dict) -> dict:
        return inference.match_batch(self.model, batch, self.modality, self.pairs, self.text_ids, self.text_mask)


class GenerateActor(_ModelActor):
    """Writes a caption, or the answer to the row's question, for every decoded row."""

    def __init__(self, export: str, modality: str, device: str, tokenizer: str, settings: dict, answer: bool) -> None:
        super().__init__(export, modality, device)
        self.generator, self.answer = _Generator(tokenizer, settings), answer

    def __call__(self, batch: dict) -> dict:
        return self.generator(self.model, batch, self.modality, self.answer)


def _run_actor(src: SourceConfig, decode: DecodeConfig, actor, kwargs: dict, batch_size: int, use_gpu: bool):
    """Decode `src` (eval mode) and map `actor` over it in a pool; yields the output batches."""
    import ray.data

    from omnivl.cluster.data_pipeline import build_dataset

    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = build_dataset([src], decode, modality=src.modality, train=False, seed=0)
    ds = ds.map_batches(actor, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
                        num_gpus=1 if use_gpu else 0, num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1 if use_gpu else 2))
    return ds.iter_batches(batch_size=None, batch_format="numpy")


def embed_with_ray(src: SourceConfig, decode: DecodeConfig, export: str, batch_size: int, use_gpu: bool,
                   caption=None) -> Embedded:
    """Embeddings of every decodable row of `src`; with `caption` (GenerationSettings) also its captions."""
    kwargs = {"export": export, "modality": src.modality, "device": "cuda" if use_gpu else "cpu",
              "tokenizer": decode.tokenizer, "caption": caption.to_dict() if caption is not None else None}
    return collect(_run_actor(src, decode, EmbedActor, kwargs, batch_size, use_gpu), src)


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
            batches.append(inference.embed_batch(model, decoded, src.modality))
    return collect(batches, src)


def collect(batches, src: SourceConfig | None = None) -> Embedded:
    parts = [b for b in batches if len(b["label_id"])]
    if not parts:
        where = f"{src.name} ({src.manifest})" if src else "the source"
        raise ValueError(f"{where}: no row could be decoded; see the bad-input report")
    return Embedded(
        np.concatenate([b["visual"] for b in parts]), np.concatenate([b["text_emb"] for b in parts]),
        np.concatenate([b["label_id"] for b in parts]), [str(t) for b in parts for t in b["text"]],
        [str(k) for b in parts for k in b["row_key"]],
        np.concatenate([b["features"] for b in parts]) if "features" in parts[0] else None,
        {str(k): str(g) for b in parts for k, g in zip(b["row_key"], b["generated"])}
        if "generated" in parts[0] else None,
    )


def generate_with_ray(src: SourceConfig, ctx: Context, answer: bool) -> dict[str, str]:
    """row key -> generated caption (or answer) for every decodable row of `src`."""
    settings = ctx.cfg.answering if answer else ctx.cfg.captioning
    kwargs = {"export": ctx.export, "modality": src.modality, "device": ctx.device,
              "tokenizer": ctx.decode.tokenizer, "settings": settings.to_dict(), "answer": answer}
    out: dict[str, str] = {}
    for b in _run_actor(src, ctx.decode, GenerateActor, kwargs, ctx.cfg.batch_size, ctx.cfg.use_gpu):
        out.update(zip((str(x) for x in b["row_key"]), (str(t) for t in b["generated"])))
    return out


def match_scores_with_ray(src: SourceConfig, ctx: Context, emb: Embedded, pairs: dict[int, list[int]]) -> dict:
    """(label_id of a visual row, text index) -> matching-head probability, for the pairs asked for."""
    from omnivl.data.text import tokenize

    ids, mask = tokenize(driver_tokenizer(ctx.decode.tokenizer), emb.text_N, ctx.decode.text_max_length)
    kwargs = {"export": ctx.export, "modality": src.modality, "device": ctx.device, "pairs": pairs,
              "text_ids": ids, "text_mask": mask}
    scores = {}
    for b in _run_actor(src, ctx.decode, MatchActor, kwargs, ctx.cfg.batch_size, ctx.cfg.use_gpu):
        scores.update(zip(zip((int(x) for x in b["label_id"]), (int(x) for x in b["text_index"])),
                          (float(s) for s in b["score"])))
    return scores


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

    ids, mask = tokenize(driver_tokenizer(decode.tokenizer), texts, decode.text_max_length)
    return inference.encode_texts(driver_model(export), ids, mask)


# ------------------------------------------------------------------------------------------ tasks


def _rows_by_key(src: SourceConfig) -> dict:
    """Manifest rows of an evaluation source by row key (the key each decoded row carries)."""
    from omnivl.data.manifest import read_manifest

    return {r.row_key: r for r in read_manifest(src)}


def retrieval(src: SourceConfig, ctx: Context, emb: Embedded) -> dict:
    """Items are distinct media files; a caption matches the item its manifest row points at."""
    by_key = _rows_by_key(src)
    reps, text_to_item = items_and_captions([by_key[k].uri for k in emb.row_key_N])
    sim_VT = emb.visual_NE[reps] @ emb.text_NE.T
    truth_tv = [{v} for v in text_to_item]
    truth_vt: list[set[int]] = [set() for _ in reps]
    for t, v in enumerate(text_to_item):
        truth_vt[v].add(t)
    rank_lists = {"contrastive": {"text_to_visual": ranks(sim_VT.T, truth_tv),
                                  "visual_to_text": ranks(sim_VT, truth_vt)}}
    k = ctx.cfg.rerank_k
    if k > 0:
        rank_lists["reranked"] = reranked_ranks(src, ctx, emb, reps, sim_VT, truth_tv, truth_vt)
    res = {name: {d: recall_metrics(r) for d, r in dirs.items()} for name, dirs in rank_lists.items()}
    table = retrieval_table(src.modality, res, n_items=len(reps), n_texts=len(text_to_item), k=k,
                            captions_per_item=len(text_to_item) / len(reps))
    out = {"rows": len(text_to_item), "items": len(reps), "rerank_k": k, **res, "table": table, "figures": []}
    if src.modality == "video":
        probe = direction_probe(emb, ctx.decode, ctx.export, src)
        if probe is not None:
            out["direction_probe"] = probe
            table["direction probe: full caption, true vs reversed (%)"] = (probe["caption"], 50.0)
            table["direction probe: motion only, true vs reversed (%)"] = (probe["motion"], 50.0)
    kind = src.modality
    for d, label, gallery in (("text_to_visual", f"text->{kind}", len(reps)),
                              ("visual_to_text", f"{kind}->text", len(text_to_item))):
        curves = {f"{label} ({name})": rank_lists[name][d].tolist() for name in rank_lists}
        png = ctx.out / f"{src.name}_{d}_recall.png"
        out["figures"].append(report.plot_recall_curve(curves, gallery, png, f"{src.name}: {label} recall@K").name)
    return out


def reranked_ranks(src, ctx: Context, emb: Embedded, reps: list[int], sim_VT: np.ndarray, truth_tv, truth_vt) -> dict:
    """Ranks after re-scoring each query's top-k candidates with the matching head (scored over Ray)."""
    k = ctx.cfg.rerank_k
    cand_tv, cand_vt = top_k_candidates(sim_VT.T, k), top_k_candidates(sim_VT, k)
    wanted: dict[int, set[int]] = {v: set() for v in range(len(reps))}
    for t, items in enumerate(cand_tv):
        for v in items:
            wanted[int(v)].add(t)
    for v, texts in enumerate(cand_vt):
        wanted[v].update(int(t) for t in texts)
    lid_of = [int(emb.label_id_N[r]) for r in reps]
    scores = match_scores_with_ray(src, ctx, emb, {lid_of[v]: sorted(ts) for v, ts in wanted.items() if ts})

    def tv(q, g):
        return np.array([scores[(lid_of[v], t)] for t, v in zip(q, g)])

    def vt(q, g):
        return np.array([scores[(lid_of[v], t)] for v, t in zip(q, g)])

    add_sim = ctx.cfg.rerank_score == "match_plus_similarity"
    return {"text_to_visual": ranks(rerank(sim_VT.T, k, tv, add_sim), truth_tv),
            "visual_to_text": ranks(rerank(sim_VT, k, vt, add_sim), truth_vt)}


def retrieval_table(kind: str, res: dict, n_items: int, n_texts: int, k: int, captions_per_item: float) -> dict:
    """Report rows: R@1/5/10, mean and median rank per direction and ranking, each with its chance level."""
    table = {}
    for d, label, gallery, matches in (("text_to_visual", f"text->{kind}", n_items, 1.0),
                                       ("visual_to_text", f"{kind}->text", n_texts, captions_per_item)):
        for name, suffix in (("contrastive", ""), ("reranked", f" (re-ranked top-{k})")):
            if name not in res:
                continue
            m = res[name][d]
            for r in (1, 5, 10):
                table[f"{label} R@{r}{suffix}"] = (m[f"R@{r}"], chance_recall(gallery, matches, r))
            mid = (gallery - matches) / (matches + 1) + 1  # expected best rank of `matches` random positions
            table[f"{label} mean rank{suffix}"] = (m["mean_rank"], mid)
            table[f"{label} median rank{suffix}"] = (m["median_rank"], mid)
    return table


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


def zero_shot(src: SourceConfig, ctx: Context, emb: Embedded) -> dict:
    name_of = classify.class_names_by_id(src)
    classes = sorted(name_of.values())
    index_of = {lid: classes.index(c) for lid, c in name_of.items()}
    templates = src.prompt_templates()
    prompts = classify.class_prompts(classes, templates)
    class_CE = classify.class_embeddings(embed_texts(ctx.export, ctx.decode, prompts), len(classes))
    truth = [index_of[int(l)] for l in emb.label_id_N]
    acc = classify.topk_accuracy(emb.visual_NE, class_CE, truth)
    matrix = classify.confusion(emb.visual_NE, class_CE, truth)
    png = report.plot_confusion(matrix, classes, ctx.out / f"{src.name}_confusion.png", f"{src.name}: zero-shot")
    chance = 100.0 / len(classes)
    table = {"zero-shot top1": (acc["top1"], chance), "zero-shot top5": (acc["top5"], min(100.0, 5 * chance))}
    majority = majority_share(truth)
    return {"rows": len(truth), "classes": classes, "templates": templates, "accuracy": acc,
            "confusion": matrix.tolist(), "table": table, "figures": [png.name], "majority_class": majority,
            "notes": [f"zero-shot: chance is a uniform guess among {len(classes)} classes; always answering the "
                      f"most frequent class of these {len(truth)} rows would score {majority:.1f} %"]}


def majority_share(labels) -> float:
    """Percent of `labels` that are the most frequent one: the score of always answering it."""
    from collections import Counter

    return 100.0 * max(Counter(labels).values()) / len(labels) if len(labels) else 0.0


def linear_probe(src: SourceConfig, ctx: Context, emb: Embedded) -> dict:
    from omnivl.eval.probe import linear_probe as fit_probe

    train_src = src.model_copy(update={"manifest": storage.absolute(ctx.cfg.probe_train[src.name])})
    train = embed_with_ray(train_src, ctx.decode, ctx.export, ctx.cfg.batch_size, ctx.cfg.use_gpu)
    names = {**classify.class_names_by_id(train_src), **classify.class_names_by_id(src)}
    truth = [names[int(l)] for l in emb.label_id_N]
    res = fit_probe(train.features_ND, [names[int(l)] for l in train.label_id_N], emb.features_ND, truth,
                    C=ctx.cfg.probe_C)
    res.pop("predictions")
    majority = majority_share(truth)
    note = (f"linear probe: logistic regression on frozen visual [CLS] features, trained on "
            f"{res['train_rows']} rows of {train_src.manifest}, scored on {res['test_rows']} held-out rows "
            f"(always answering their most frequent class would score {majority:.1f} %)")
    return {**res, "train_manifest": train_src.manifest, "majority_class": majority,
            "table": {"linear probe top1": (res["accuracy"], res["chance"])},
            "notes": [note]}


def captioning(src: SourceConfig, ctx: Context, emb: Embedded | None) -> dict:
    """One caption per media item, scored against all of the item's captions."""
    from omnivl.data.text import clean_caption
    from omnivl.eval.captioning import scores_with_chance

    generated = emb.generated if emb is not None and emb.generated is not None else \
        generate_with_ray(src, ctx, answer=False)
    refs: dict[str, list[str]] = {}
    hyps: dict[str, str] = {}
    for key, row in _rows_by_key(src).items():
        if key in generated:  # rows that could not be decoded have no caption to score
            refs.setdefault(row.uri, []).append(clean_caption(row.text, ctx.decode.max_caption_chars)[0])
            hyps.setdefault(row.uri, generated[key])
    res = scores_with_chance(refs, hyps, java=ctx.cfg.meteor)
    scores, chance = res["scores"], res["chance"]
    table = {f"captioning {m} (x100)": (100 * scores[m], 100 * (chance.get(m) or 0.0))
             for m in ("BLEU-4", "CIDEr", "METEOR") if scores.get(m) is not None}
    if not ctx.cfg.meteor:
        scores["unavailable"]["METEOR"] = "switched off (eval.meteor: false)"
    notes = [f"captioning: {m} not computed: {why}" for m, why in scores["unavailable"].items()]
    notes.append("captioning chance: every item captioned with another item's reference caption")
    preds = [{"item": uri, "generated": hyps[uri], "references": refs[uri]} for uri in refs]
    _write_predictions(ctx.out / f"{src.name}_captions.jsonl", preds)
    samples = [(uri, [f"generated: {hyps[uri]}", f"reference: {refs[uri][0]}"]) for uri in list(refs)[:ctx.cfg.samples]]
    figures = _sample_sheet(src, ctx, samples, f"{src.name}: generated captions")
    return {"rows": len(generated), "items": len(refs), "scores": scores, "chance": chance,
            "settings": ctx.cfg.captioning.to_dict(), "predictions": f"{src.name}_captions.jsonl",
            "table": table, "notes": notes, "figures": figures}


def qa(src: SourceConfig, ctx: Context, emb: Embedded | None) -> dict:
    from omnivl.eval.qa import normalize_answer, qa_accuracy

    generated = generate_with_ray(src, ctx, answer=True)
    preds, answers, qtypes, records = [], [], [], []
    for key, row in _rows_by_key(src).items():
        if key not in generated:
            continue
        preds.append(generated[key])
        answers.append(row.answer)
        qtypes.append(row.qtype or "all")
        records.append({"item": row.uri, "question": row.question, "answer": row.answer, "qtype": row.qtype,
                        "generated": generated[key],
                        "correct": normalize_answer(generated[key]) == normalize_answer(row.answer)})
    if not records:
        raise ValueError(f"{src.name}: no QA row could be decoded ({src.manifest}); see the bad-input report")
    res = qa_accuracy(preds, answers, qtypes)
    table = {"QA exact match (%)": (res["accuracy"], res["chance"])}
    if len(res["per_type"]) > 1:
        for q, m in res["per_type"].items():
            table[f"QA {q} exact match (%)"] = (m["accuracy"], m["chance"])
    _write_predictions(ctx.out / f"{src.name}_answers.jsonl", records)
    samples = [(r["item"], [f"Q: {r['question']}", f"generated: {r['generated']}", f"truth: {r['answer']}"])
               for r in records[:ctx.cfg.samples]]
    figures = _sample_sheet(src, ctx, samples, f"{src.name}: generated answers")
    notes = ["QA: exact match after VQA answer normalization; chance: a uniform guess among the answers of the "
             "question's type in this set"]
    return {"rows": len(records), **res, "settings": ctx.cfg.answering.to_dict(),
            "predictions": f"{src.name}_answers.jsonl", "table": table, "notes": notes, "figures": figures}


TASKS = {"retrieval": retrieval, "zero_shot": zero_shot, "linear_probe": linear_probe, "captioning": captioning,
         "qa": qa}


def _write_predictions(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _sample_sheet(src: SourceConfig, ctx: Context, samples: list[tuple[str, list[str]]], title: str) -> list[str]:
    """A PNG of the first frames of `samples` (media uri, text lines), decoded here as evaluation saw them."""
    if not samples:
        return []
    frames = sample_frames(src, ctx.decode, [uri for uri, _ in samples])
    sheet = [{"frame": frames[uri], "lines": lines} for uri, lines in samples if uri in frames]
    png = report.plot_sample_sheet(sheet, ctx.out / f"{src.name}_samples.png", title)
    return [png.name]


def sample_frames(src: SourceConfig, decode: DecodeConfig, uris: list[str]) -> dict[str, np.ndarray]:
    """uri -> uint8 HWC frame (a video's middle frame) of the first manifest row of each uri."""
    from omnivl.data.decode import RowDecoder
    from omnivl.data.manifest import read_manifest, row_batches

    first = {}
    for row in read_manifest(src):
        if row.uri in uris and row.uri not in first:
            first[row.uri] = row
    rows = [first[u] for u in uris if u in first]
    if not rows:
        return {}
    label_src = src.model_copy(update={"kind": "text"})  # any text decodes: only the pixels are used
    for r in rows:
        r.text = r.text or "sample"
    decoded, _ = RowDecoder([label_src], decode, src.modality, train=False)(next(row_batches(rows, len(rows))))
    uri_of = {r.row_key: r.uri for r in rows}
    out = {}
    for key, px in zip(decoded["row_key"], decoded["pixels"]):
        frame = px[px.shape[0] // 2] if px.ndim == 4 else px
        out[uri_of[str(key)]] = np.transpose(frame, (1, 2, 0))
    return out


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
