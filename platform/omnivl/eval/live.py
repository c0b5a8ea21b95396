"""Evaluation during training (open_clip's `--zeroshot-frequency`): a few held-out rows per source, decoded
once per stage, scored with the current model every `eval_during_training.every_steps` steps. Plain Python and
torch, no Ray: `omnivl.cluster.train_data` decodes on the driver (`decode_held_out`) and the worker's runner
(`omnivl.train.runner.HeldOutEvaluator`) evaluates on rank 0 (`evaluate`).

Metrics per source (keys of the returned dict, all percentages, each with `<key>_chance`):
  text sources   t2i_r1 / i2t_r1 (images) or t2v_r1 / v2t_r1 (videos): retrieval R@1 text->visual and
                 visual->text, contrastive similarity only; a gallery item is a distinct media file
  label sources  zeroshot_top1: the most similar class-name prompt ensemble, over every class of the source
plus `items` (rows evaluated). Legend: N decoded rows, I gallery items, C classes, P prompts, E embedding dim.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.eval import classify, inference
from omnivl.eval.retrieval import bidirectional, chance_recall, items_and_captions

KIND = "eval"  # the `kind` of an evaluation record in metrics.jsonl (step records carry none)


@dataclass
class HeldOut:
    """One held-out source, decoded (eval transforms) and tokenized with the job's decode settings.

    `batch`: decoded columns (`omnivl.data.decode.OUTPUT_COLUMNS`) of N rows. Text sources: `text_to_item[n]`
    is row n's gallery item (its media file), `item_rows[i]` the first row of item i. Label sources: `truth[n]`
    is row n's index in `classes` (every class of the source, sorted), `prompt_ids`/`prompt_mask` [C * P, L] the
    class-major prompts (`classify.class_prompts`)."""

    name: str
    modality: str
    kind: str
    batch: dict[str, np.ndarray]
    text_to_item: list[int] = field(default_factory=list)
    item_rows: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    truth: list[int] = field(default_factory=list)
    prompt_ids: np.ndarray | None = None
    prompt_mask: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.batch["label_id"])


def decode_held_out(src: SourceConfig, decode: DecodeConfig, max_items: int, batch_size: int = 32) -> HeldOut:
    """The first `max_items` manifest rows of `src`, decoded as evaluation decodes them (no augmentation).
    Rows that cannot be decoded are left out; raises ValueError (naming the source) if fewer than 2 remain."""
    from omnivl.data.decode import RowDecoder
    from omnivl.data.manifest import read_manifest, row_batches
    from omnivl.data.text import load_tokenizer, tokenize

    rows = read_manifest(src, limit=max_items)
    decoder = RowDecoder([src], decode, src.modality, train=False)
    parts = [decoder(cols)[0] for cols in row_batches(rows, batch_size)] if rows else []
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {"label_id": []}
    if len(batch["label_id"]) < 2:
        raise ValueError(f"eval_during_training: source {src.name!r} ({src.manifest}): {len(batch['label_id'])} "
                         f"of its first {len(rows)} rows could be decoded; at least 2 are needed")
    held = HeldOut(src.name, src.modality, src.kind, batch)
    if src.kind == "text":
        uri_of = {r.row_key: r.uri for r in rows}
        held.item_rows, held.text_to_item = items_and_captions([uri_of[str(k)] for k in batch["row_key"]])
    elif src.kind == "label":
        name_of = classify.class_names_by_id(src)
        held.classes = sorted(name_of.values())
        index = {lid: held.classes.index(c) for lid, c in name_of.items()}
        held.truth = [index[int(lid)] for lid in batch["label_id"]]
        prompts = classify.class_prompts(held.classes, src.prompt_templates())
        held.prompt_ids, held.prompt_mask = tokenize(load_tokenizer(decode.tokenizer), prompts, decode.text_max_length)
    return held


def _letter(modality: str) -> str:
    return "i" if modality == "image" else "v"


def _embed(model, held: HeldOut, batch_size: int, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """(visual_NE, text_NE) of every held-out row, in row order."""
    outs = [inference.embed_batch(model, {k: v[i:i + batch_size] for k, v in held.batch.items()}, held.modality,
                                  precision=precision)
            for i in range(0, held.rows, batch_size)]
    return np.concatenate([o["visual"] for o in outs]), np.concatenate([o["text_emb"] for o in outs])


def retrieval_r1(visual_IE: np.ndarray, text_NE: np.ndarray, text_to_item: list[int], modality: str) -> dict:
    """R@1 (percent) text->visual and visual->text with chance levels: a text matches its own item, an item any
    of its captions."""
    res = bidirectional(visual_IE @ text_NE.T, text_to_item)
    items, texts = visual_IE.shape[0], len(text_to_item)
    v = _letter(modality)
    return {f"t2{v}_r1": res["text_to_visual"]["R@1"], f"t2{v}_r1_chance": chance_recall(items, 1.0, 1),
            f"{v}2t_r1": res["visual_to_text"]["R@1"],
            f"{v}2t_r1_chance": chance_recall(texts, texts / max(items, 1), 1)}


def zero_shot_top1(visual_NE: np.ndarray, prompt_TE: np.ndarray, truth: list[int], num_classes: int) -> dict:
    """Top-1 accuracy (percent) of the nearest class-prompt ensemble, and chance (a uniform guess)."""
    class_CE = classify.class_embeddings(prompt_TE, num_classes)
    return {"zeroshot_top1": classify.topk_accuracy(visual_NE, class_CE, truth, ks=(1,))["top1"],
            "zeroshot_top1_chance": 100.0 / num_classes}


def evaluate_source(model, held: HeldOut, batch_size: int = 32, precision: str = "fp32") -> dict[str, float]:
    """The metrics of one held-out source (see the module docstring), the forward passes autocast to `precision`
    (`omnivl.eval.inference`); the model must be in eval mode."""
    visual_NE, text_NE = _embed(model, held, batch_size, precision)
    out: dict[str, float] = {"items": held.rows}
    if held.kind == "text":
        out.update(retrieval_r1(visual_NE[held.item_rows], text_NE, held.text_to_item, held.modality))
    elif held.kind == "label":
        prompt_TE = inference.encode_texts(model, held.prompt_ids, held.prompt_mask, precision=precision)
        out.update(zero_shot_top1(visual_NE, prompt_TE, held.truth, len(held.classes)))
    return out


def evaluate(model, held_outs: list[HeldOut], batch_size: int = 32, precision: str = "fp32") -> dict[str, float]:
    """`eval_<source>_<metric>` for every held-out source, and `eval_seconds`. Runs in eval mode without
    gradients, at `precision`, and puts the model back in the mode it was in."""
    start, was_training = time.monotonic(), model.training
    model.eval()
    try:
        out = {f"eval_{h.name}_{k}": v for h in held_outs
               for k, v in evaluate_source(model, h, batch_size, precision).items()}
    finally:
        model.train(was_training)
    out["eval_seconds"] = round(time.monotonic() - start, 3)
    return out


def eval_record(stage: str, index: int, step: int, total: int, metrics: dict[str, float]) -> dict:
    """The metrics.jsonl record of one evaluation (`kind: eval`; step records have no `kind`)."""
    return {"kind": KIND, "stage": stage, "stage_index": index, "step": step, "total_steps": total, **metrics,
            "time": time.time()}


def due(step: int, total: int, every_steps: int) -> bool:
    """Evaluate after optimizer step `step` (1-based) of a `total`-step stage?"""
    return step % every_steps == 0 or step == total
