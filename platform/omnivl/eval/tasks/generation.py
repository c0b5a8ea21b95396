"""The generation tasks: captioning on a caption (`kind: text`) source (BLEU-4, CIDEr, METEOR with Java) and
question answering on a `kind: qa` source (the generation decoder continues `question: {q} answer:`; exact
match). Each writes its generations to `<source>_captions.jsonl` / `<source>_answers.jsonl` and a sample sheet
(frames beside the generated text) to `<source>_samples.png`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from omnivl.data.config import DecodeConfig
from omnivl.eval import report
from omnivl.eval.embedding import Embedded
from omnivl.eval.results import Score, TaskResult
from omnivl.eval.source import EvalSource
from omnivl.eval.tasks.context import EvalContext

CAPTION_METRICS = ("BLEU-4", "CIDEr", "METEOR")
CAPTION_SCALE = 100  # pycocoevalcap's [0, 1] (CIDEr [0, 10]) scores, reported x100 as papers do
SAMPLE_TEXT = "sample"  # sample sheets decode any row as a caption row: only its pixels are used


def captioning(source: EvalSource, ctx: EvalContext, emb: Embedded | None) -> TaskResult:
    """One caption per media item (from the embedding pass when it rode along), scored against all of the
    item's captions."""
    from omnivl.data.text import clean_caption
    from omnivl.eval.captioning import scores_with_chance

    generated = emb.generated if emb is not None and emb.generated is not None else \
        ctx.media.generate(source, ctx.cfg.captioning, answer=False)
    refs: dict[str, list[str]] = {}
    hyps: dict[str, str] = {}
    for key, row in source.rows.items():
        if key in generated:  # rows that could not be decoded have no caption to score
            refs.setdefault(row.uri, []).append(clean_caption(row.text, ctx.decode.max_caption_chars)[0])
            hyps.setdefault(row.uri, generated[key])
    res = scores_with_chance(refs, hyps, java=ctx.cfg.meteor)
    scores, chance = res["scores"], res["chance"]
    table = {f"captioning {m} (x{CAPTION_SCALE})":
             Score(CAPTION_SCALE * scores[m], CAPTION_SCALE * (chance.get(m) or 0.0))
             for m in CAPTION_METRICS if scores.get(m) is not None}
    if not ctx.cfg.meteor:
        scores["unavailable"]["METEOR"] = "switched off (eval.meteor: false)"
    notes = [f"captioning: {m} not computed: {why}" for m, why in scores["unavailable"].items()]
    notes.append("captioning chance: every item captioned with another item's reference caption")
    predictions = f"{source.name}_captions.jsonl"
    write_predictions(ctx.out / predictions,
                      [{"item": uri, "generated": hyps[uri], "references": refs[uri]} for uri in refs])
    samples = [(uri, [f"generated: {hyps[uri]}", f"reference: {refs[uri][0]}"]) for uri in list(refs)[:ctx.cfg.samples]]
    figures = sample_sheet(source, ctx, samples, f"{source.name}: generated captions")
    payload = {"items": len(refs), "scores": scores, "chance": chance, "settings": ctx.cfg.captioning.to_dict(),
               "predictions": predictions}
    return TaskResult(payload, table, notes=notes, figures=figures, rows=len(generated))


def qa(source: EvalSource, ctx: EvalContext, emb: Embedded | None) -> TaskResult:
    from omnivl.eval.qa import normalize_answer, qa_accuracy

    generated = ctx.media.generate(source, ctx.cfg.answering, answer=True)
    records = [{"item": row.uri, "question": row.question, "answer": row.answer, "qtype": row.qtype,
                "generated": generated[key],
                "correct": normalize_answer(generated[key]) == normalize_answer(row.answer)}
               for key, row in source.rows.items() if key in generated]
    if not records:
        raise ValueError(f"{source.name}: no QA row could be decoded ({source.manifest}); see the bad-input report")
    res = qa_accuracy([r["generated"] for r in records], [r["answer"] for r in records],
                      [r["qtype"] or "all" for r in records])
    table = {"QA exact match (%)": Score(res["accuracy"], res["chance"])}
    if len(res["per_type"]) > 1:
        for q, m in res["per_type"].items():
            table[f"QA {q} exact match (%)"] = Score(m["accuracy"], m["chance"])
    predictions = f"{source.name}_answers.jsonl"
    write_predictions(ctx.out / predictions, records)
    samples = [(r["item"], [f"Q: {r['question']}", f"generated: {r['generated']}", f"truth: {r['answer']}"])
               for r in records[:ctx.cfg.samples]]
    figures = sample_sheet(source, ctx, samples, f"{source.name}: generated answers")
    notes = ["QA: exact match after VQA answer normalization; chance: a uniform guess among the answers of the "
             "question's type in this set"]
    payload = {**res, "settings": ctx.cfg.answering.to_dict(), "predictions": predictions}
    return TaskResult(payload, table, notes=notes, figures=figures, rows=len(records))


def write_predictions(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def sample_sheet(source: EvalSource, ctx: EvalContext, samples: list[tuple[str, list[str]]], title: str) -> list[str]:
    """A PNG of the first frames of `samples` (media uri, text lines), decoded here as evaluation saw them;
    returns its name (none without samples)."""
    if not samples:
        return []
    frames = sample_frames(source, ctx.decode, [uri for uri, _ in samples])
    sheet = [{"frame": frames[uri], "lines": lines} for uri, lines in samples if uri in frames]
    png = report.plot_sample_sheet(sheet, ctx.out / f"{source.name}_samples.png", title)
    return [png.name]


def sample_frames(source: EvalSource, decode: DecodeConfig, uris: list[str]) -> dict[str, np.ndarray]:
    """uri -> uint8 HWC frame (a video's middle frame) of the first manifest row of each uri."""
    from omnivl.data.decode import RowDecoder
    from omnivl.data.manifest import row_batches

    rows = source.first_rows(uris)
    if not rows:
        return {}
    for r in rows:  # copies of the source's rows
        r.text = r.text or SAMPLE_TEXT
    as_captions = source.config.model_copy(update={"kind": "text"})
    decoded, _ = RowDecoder([as_captions], decode, source.modality, train=False)(next(row_batches(rows, len(rows))))
    uri_of = {r.row_key: r.uri for r in rows}
    out = {}
    for key, px in zip(decoded["row_key"], decoded["pixels"]):
        frame = px[px.shape[0] // 2] if px.ndim == 4 else px
        out[uri_of[str(key)]] = np.transpose(frame, (1, 2, 0))
    return out
