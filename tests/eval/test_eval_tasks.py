"""The evaluate job's tasks without Ray (`omnivl.eval`): re-ranking from the visual tokens kept by the embedding
pass, each source's manifest read once, the metrics.json entry of typed results, the token budget, and a whole
job run in this process with `LocalPass`."""

from __future__ import annotations

import ast
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import omnivl.eval
from conftest import DECODE, eval_spec
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.eval import embedding, inference
from omnivl.eval.config import EvalConfig, GenerationSettings
from omnivl.eval.driver import DriverModel
from omnivl.eval.embedding import check_token_budget, collect
from omnivl.eval.job import run_evaluation
from omnivl.eval.media import LocalPass
from omnivl.eval.results import Score, SourceResult, TaskResult, headline
from omnivl.eval.retrieval import items_and_captions, ranks, rerank, top_k_candidates
from omnivl.eval.source import EvalSource
from omnivl.eval.tasks import EvalContext, evaluate_source
from omnivl.eval.tasks.retrieval import candidate_pairs, item_tokens, reranked_ranks
from omnivl.spec.loader import validate_spec

RERANK_K = 4


def _context(export: str, out: Path, **cfg) -> EvalContext:
    decode = DecodeConfig(**DECODE)
    return EvalContext(EvalConfig(**cfg), decode, export, out, LocalPass(decode, export, batch_size=5),
                       DriverModel(export, decode))


def _source(corpus: Path, dataset: str, split: str = "train") -> EvalSource:
    return EvalSource.read(SourceConfig(name=dataset, manifest=str(corpus / dataset / f"{split}.jsonl"),
                                        modality=dataset.split("_")[0]))


def _reference_scores(source: EvalSource, export: str, emb, reps: list[int], wanted: dict[int, set[int]]) -> dict:
    """(item, text) -> matching probability the old way: the source decoded again and every pair scored by
    `inference.match_batch` from the re-decoded pixels (pairs keyed by the label id of the item's row)."""
    from omnivl.data.decode import RowDecoder
    from omnivl.data.manifest import read_manifest, row_batches
    from omnivl.data.text import load_tokenizer, tokenize
    from omnivl.models.export import load_export

    decode = DecodeConfig(**DECODE)
    model = load_export(export)
    ids, mask = tokenize(load_tokenizer(decode.tokenizer), emb.text_N, decode.text_max_length)
    item_of_label = {int(emb.label_id_N[r]): v for v, r in enumerate(reps)}
    pairs = {int(emb.label_id_N[reps[v]]): sorted(ts) for v, ts in wanted.items() if ts}
    decoder = RowDecoder([source.config], decode, source.modality, train=False)
    scores = {}
    for cols in row_batches(read_manifest(source.config), 3):
        out = inference.match_batch(model, decoder(cols)[0], source.modality, pairs, ids, mask)
        for lid, t, s in zip(out["label_id"], out["text_index"], out["score"]):
            scores[(item_of_label[int(lid)], int(t))] = float(s)
    return scores


@pytest.mark.parametrize("dataset", ["image_text", "video_text"])
def test_reranking_from_kept_tokens_equals_match_batch_on_redecoded_pixels(dataset, eval_corpus, tiny_export,
                                                                           tmp_path):
    ctx = _context(tiny_export, tmp_path, rerank_k=RERANK_K)
    source = _source(eval_corpus, dataset)
    emb = ctx.media.embed(source, keep_tokens=True)
    reps, text_to_item = items_and_captions([source.uri(k) for k in emb.row_key_N])
    assert len(reps) > RERANK_K and sorted(emb.tokens) == sorted(emb.row_key_N[r] for r in reps)
    sim_VT = emb.visual_NE[reps] @ emb.text_NE.T
    truth_tv = [{v} for v in text_to_item]
    truth_vt = [{t for t, i in enumerate(text_to_item) if i == v} for v in range(len(reps))]

    wanted: dict[int, set[int]] = {v: set() for v in range(len(reps))}  # candidates as the old code listed them
    for t, items in enumerate(top_k_candidates(sim_VT.T, RERANK_K)):
        for v in items:
            wanted[int(v)].add(t)
    for v, texts in enumerate(top_k_candidates(sim_VT, RERANK_K)):
        wanted[v].update(int(t) for t in texts)
    want = _reference_scores(source, tiny_export, emb, reps, wanted)

    pairs = candidate_pairs(sim_VT, RERANK_K)
    assert sorted(map(tuple, pairs.tolist())) == sorted(want)
    got = ctx.driver.match_pairs(item_tokens(emb, reps), emb.text_N, pairs)
    np.testing.assert_allclose(got, [want[(v, t)] for v, t in pairs.tolist()], atol=1e-5)

    def tv(q, g):
        return np.array([want[(int(v), int(t))] for t, v in zip(q, g)])

    def vt(q, g):
        return np.array([want[(int(v), int(t))] for v, t in zip(q, g)])

    new = reranked_ranks(ctx, emb, reps, sim_VT, truth_tv, truth_vt)
    np.testing.assert_array_equal(new["text_to_visual"], ranks(rerank(sim_VT.T, RERANK_K, tv), truth_tv))
    np.testing.assert_array_equal(new["visual_to_text"], ranks(rerank(sim_VT, RERANK_K, vt), truth_vt))


def test_collect_keeps_a_copy_of_the_first_rows_tokens_of_each_item():
    def batch(keys, fill):
        n = len(keys)
        return {"visual": np.ones((n, 2)), "text_emb": np.ones((n, 2)), "features": np.ones((n, 3)),
                "label_id": np.arange(n), "text": np.array(["t"] * n, dtype=object),
                "row_key": np.array(keys, dtype=object), "tokens": np.full((n, 4, 3), fill, np.float32)}

    item = {"a0": "a.jpg", "a1": "a.jpg", "b0": "b.jpg", "c0": "c.jpg", "b1": "b.jpg"}
    first = batch(["a1", "b0"], 1.0)
    emb = collect([first, batch([], 0.0), batch(["a0", "c0", "b1"], 2.0)], "src", item.get)
    assert emb.rows == 5 and emb.row_key_N == ["a1", "b0", "a0", "c0", "b1"]
    assert sorted(emb.tokens) == ["a1", "b0", "c0"]
    assert emb.tokens["a1"].shape == (4, 3) and emb.tokens["c0"][0, 0] == 2.0
    assert not np.shares_memory(emb.tokens["a1"], first["tokens"])
    assert collect([{k: v for k, v in first.items() if k != "tokens"}], "src").tokens is None
    with pytest.raises(ValueError, match="no item_of"):
        collect([first], "src")
    with pytest.raises(ValueError, match="src: no row could be decoded"):
        collect([batch([], 0.0)], "src")


def test_token_budget_error_names_the_source_and_the_way_out(eval_corpus, tiny_export, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"big \(m\): re-ranking keeps the visual tokens of each of its 10000 items "
                                         r"\(197 x 768 float32 each, 5\.6 GiB in all\), over the 1\.0 GiB"):
        check_token_budget("big (m)", 10_000, 197, 768, budget=2**30)
    check_token_budget("small", 10, 197, 768)

    class NoPass(LocalPass):
        def embed(self, *a, **k):
            raise AssertionError("the budget is checked before the embedding pass")

    ctx = _context(tiny_export, tmp_path, rerank_k=RERANK_K)
    ctx.media = NoPass(ctx.decode, tiny_export)
    monkeypatch.setattr(embedding, "MAX_KEPT_TOKEN_BYTES", 1000)
    with pytest.raises(ValueError, match=r"image_text \(.*train\.jsonl\): re-ranking keeps .* set eval\.rerank_k: 0"):
        evaluate_source(_source(eval_corpus, "image_text"), ["retrieval"], ctx)


def test_source_result_writes_the_metrics_entry():
    res = SourceResult("image", "text")
    res.add("retrieval", TaskResult({"items": 3, "contrastive": {"R@1": 50.0}}, {"R@1": Score(50.0, 33.3)},
                                    notes=["n1"], figures=["a.png"], rows=6))
    res.add("captioning", TaskResult({"items": 3}, {"BLEU": Score(1.234, 0.5)}, notes=["n2"], rows=4))
    entry = json.loads(json.dumps(res.to_json()))
    assert entry == {"modality": "image", "kind": "text", "rows": 6,
                     "tasks": {"retrieval": {"items": 3, "contrastive": {"R@1": 50.0}}, "captioning": {"items": 3}},
                     "table": {"R@1": [50.0, 33.3], "BLEU": [1.234, 0.5]}, "notes": ["n1", "n2"],
                     "figures": ["a.png"], "retrieval": {"R@1": 50.0}}
    assert headline({"sources": {"s": entry}})["s"]["BLEU"] == {"value": 1.23, "chance": 0.5}


def test_a_whole_job_in_this_process_reads_each_manifest_once(eval_corpus, tiny_export, tmp_path, monkeypatch):
    """Every task through `run_evaluation` with the in-process media pass; each manifest's rows are read once
    (`read_chunk` on the driver), the probe's train split included."""
    import omnivl.data.manifest as manifest

    raw = eval_spec(eval_corpus, tiny_export, tmp_path / "out", ["retrieval", "zero_shot", "linear_probe",
                                                                 "captioning", "qa"],
                    meteor=False, rerank_k=RERANK_K, samples=2, captioning={"max_new_tokens": 4},
                    answering={"max_new_tokens": 3})
    kept = ("video_text", "image_label", "image_qa")
    raw["data"]["sources"] = [s for s in raw["data"]["sources"] if s["name"] in kept]
    job = validate_spec(raw)
    reads, read_chunk = Counter(), manifest.read_chunk

    def counting(chunk, *args, **kwargs):
        reads[Path(chunk.file).relative_to(eval_corpus).as_posix()] += 1
        return read_chunk(chunk, *args, **kwargs)

    monkeypatch.setattr(manifest, "read_chunk", counting)
    summary = run_evaluation(job, lambda export: LocalPass(job.data.decode, export, job.eval.batch_size))
    assert reads == {"video_text/test.jsonl": 1, "image_label/test.jsonl": 1, "image_label/train.jsonl": 1,
                     "image_qa/test.jsonl": 1}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {n: sorted(m["tasks"]) for n, m in metrics["sources"].items()} == {
        "video_text": ["captioning", "retrieval"], "image_label": ["linear_probe", "zero_shot"], "image_qa": ["qa"]}
    video = metrics["sources"]["video_text"]
    assert video["retrieval"] == video["tasks"]["retrieval"]["contrastive"]
    assert "text->video R@1 (re-ranked top-4)" in video["table"] and "direction_probe" in video["tasks"]["retrieval"]
    report = (tmp_path / "out" / "report.md").read_text()
    for name, m in metrics["sources"].items():
        for key, (value, chance) in m["table"].items():
            assert f"| {key} | {value:.1f} | {chance:.1f} |" in report
            assert summary["metrics"][name][key] == {"value": round(value, 2), "chance": round(chance, 2)}
        assert m["figures"] and all((tmp_path / "out" / f).exists() for f in m["figures"])
    assert metrics["bad_input"]["rows_seen"] > 0 and metrics["bad_input"]["rows_skipped"] == 0


# ---- precision ------------------------------------------------------------------------------------------------


def _cosine_N(a_NE: np.ndarray, b_NE: np.ndarray) -> np.ndarray:
    return (a_NE * b_NE).sum(1) / (np.linalg.norm(a_NE, axis=1) * np.linalg.norm(b_NE, axis=1))


@pytest.mark.parametrize("dataset", ["image_text", "video_text"])
def test_bf16_passes_stay_close_to_fp32_and_really_autocast(dataset, eval_corpus, tiny_export):
    """The embedding pass (embeddings, frozen features, kept tokens, captions on the same pixels), prompt-text
    embeddings and re-ranking scores at bf16: within bf16 rounding of fp32 (cosine > 0.99), and not
    bit-identical (the autocast ran). Outputs stay float32."""
    decode, source = DecodeConfig(**DECODE), _source(eval_corpus, dataset, "val")
    caption = GenerationSettings(max_new_tokens=3)
    fp32, bf16 = (LocalPass(decode, tiny_export, batch_size=5, precision=p).embed(source, caption=caption,
                                                                                   keep_tokens=True)
                  for p in ("fp32", "bf16"))
    assert fp32.row_key_N == bf16.row_key_N and sorted(fp32.generated) == sorted(bf16.generated)
    for field in ("visual_NE", "text_NE", "features_ND"):
        a, b = getattr(fp32, field), getattr(bf16, field)
        assert b.dtype == np.float32 and _cosine_N(a, b).min() > 0.99 and np.abs(a - b).max() > 0, field
    tokens = [fp32.tokens[k] for k in sorted(fp32.tokens)]  # the same tokens for both: the head's precision alone
    texts = fp32.text_N[:4]
    pairs = np.array([(v, t) for v in range(len(tokens)) for t in range(len(texts))])
    fp32_driver, bf16_driver = (DriverModel(tiny_export, decode, precision=p) for p in ("fp32", "bf16"))
    a, b = fp32_driver.embed_texts(texts), bf16_driver.embed_texts(texts)
    assert _cosine_N(a, b).min() > 0.99 and np.abs(a - b).max() > 0
    a, b = fp32_driver.match_pairs(tokens, texts, pairs), bf16_driver.match_pairs(tokens, texts, pairs)
    assert np.abs(a - b).max() < 0.02 and np.abs(a - b).max() > 0


def test_every_model_call_of_a_job_runs_at_the_spec_precision(eval_corpus, tiny_export, tmp_path, monkeypatch):
    """`eval.precision: bf16` through `run_evaluation`: each kind of model call the tasks make (embedding pass,
    generation for captions and answers, prompt embeddings, re-ranking) autocasts to bf16, and no call runs
    at another precision."""
    raw = eval_spec(eval_corpus, tiny_export, tmp_path / "out", ["retrieval", "zero_shot", "linear_probe",
                                                                 "captioning", "qa"],
                    precision="bf16", meteor=False, rerank_k=RERANK_K, samples=0, captioning={"max_new_tokens": 2},
                    answering={"max_new_tokens": 2})
    raw["data"]["sources"] = [s for s in raw["data"]["sources"] if s["name"] in ("image_text", "image_label",
                                                                                  "image_qa")]
    job = validate_spec(raw)
    calls, autocast = Counter(), inference._autocast

    def recording(model, precision):
        calls[(sys._getframe(1).f_code.co_name, precision)] += 1
        return autocast(model, precision)

    monkeypatch.setattr(inference, "_autocast", recording)
    run_evaluation(job, lambda export: LocalPass(job.data.decode, export, job.eval.batch_size,
                                                 precision=job.eval.precision))
    assert sorted({name for name, _ in calls}) == ["embed_batch", "encode_texts", "generate_batch", "match_pairs"]
    assert {precision for _, precision in calls} == {"bf16"}


def test_evaluation_library_imports_no_ray():
    """DESIGN §2: the evaluation layer is plain Python; Ray stays in omnivl.cluster.evaluate."""
    root = Path(omnivl.eval.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert len(list(root.rglob("*.py"))) >= 10 and offenders == []
