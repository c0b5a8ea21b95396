"""The `evaluate` job on the embedded Ray cluster: every task on a small synthetic corpus with a tiny model.

The model is randomly initialized, so the numbers are near chance; what is tested is that every number in
metrics.json is what the model's real outputs give, recomputed here in this process without Ray.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import eval_spec
from omnivl.cluster import data_pipeline
from omnivl.cluster import evaluate as ev
from omnivl.data import manifest
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.data.decode import RowDecoder
from omnivl.data.manifest import read_manifest, row_batches
from omnivl.data.text import label_id_for_class, label_id_for_pair, load_tokenizer, tokenize
from omnivl.eval.captioning import caption_metrics
from omnivl.eval.config import GenerationSettings
from omnivl.eval.probe import linear_probe
from omnivl.eval.qa import qa_accuracy
from omnivl.eval.retrieval import items_and_captions, ranks, recall_metrics, rerank
from omnivl.eval.source import EvalSource
from omnivl.models.export import load_export
from omnivl.spec.loader import validate_spec

pytestmark = pytest.mark.ray
ALL_TASKS = ["retrieval", "zero_shot", "linear_probe", "captioning", "qa"]
RERANK_K = 4


@pytest.fixture(scope="module")
def evaluated(s3_server, eval_corpus, tiny_export, tmp_path_factory):
    import ray

    if not ray.is_initialized():  # as the `ray_local` fixture does (it is function-scoped; this runs once)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 object_store_memory=1_500_000_000)
    out = tmp_path_factory.mktemp("eval") / "run"
    job = validate_spec(eval_spec(eval_corpus, tiny_export, out, ALL_TASKS, meteor=False, rerank_k=RERANK_K,
                                  captioning={"max_new_tokens": 8}, answering={"max_new_tokens": 4}))
    reads, read_chunk = Counter(), manifest.read_chunk

    def counting(chunk, *args, **kwargs):  # manifest rows read on the driver (decode reads in Ray workers)
        reads[Path(chunk.file).relative_to(eval_corpus).as_posix()] += 1
        return read_chunk(chunk, *args, **kwargs)

    passes, build_dataset = Counter(), data_pipeline.build_dataset

    def counting_passes(sources, *args, **kwargs):  # one Ray Data pass over the media of a source
        passes[Path(sources[0].manifest).relative_to(eval_corpus).as_posix()] += 1
        return build_dataset(sources, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(manifest, "read_chunk", counting)
        mp.setattr(data_pipeline, "build_dataset", counting_passes)
        summary = ev.run_job(job)
    return job, out, summary, json.loads((out / "metrics.json").read_text()), (reads, passes)


def test_each_manifest_is_read_once_and_its_media_decoded_once(evaluated):
    """One `EvalSource` per source serves every task (joins by row key); the probe's train split is read once
    too. One media pass per source: captions ride along with the embeddings, and re-ranking decodes nothing
    again (it scores the visual tokens the embedding pass kept)."""
    *_, (reads, passes) = evaluated
    splits = {f"{d}/test.jsonl" for d in ("image_text", "video_text", "image_label", "video_label", "image_qa",
                                          "video_qa")}
    assert reads == {name: 1 for name in splits | {"image_label/train.jsonl"}}
    assert passes == reads


def _source(job, name) -> SourceConfig:
    return next(s for s in job.data.sources if s.name == name)


def test_every_task_writes_metrics_report_and_figures(evaluated):
    job, out, summary, metrics, _ = evaluated
    expected = {"image_text": {"retrieval", "captioning"}, "video_text": {"retrieval", "captioning"},
                "image_label": {"zero_shot", "linear_probe"}, "video_label": {"zero_shot"},
                "image_qa": {"qa"}, "video_qa": {"qa"}}
    assert {n: set(m["tasks"]) for n, m in metrics["sources"].items()} == expected
    report = (out / "report.md").read_text()
    for name, m in metrics["sources"].items():
        assert m["table"] and m["figures"]
        for key, (value, chance) in m["table"].items():  # every number next to its chance level
            assert f"| {key} | {value:.1f} | {chance:.1f} |" in report
            assert summary["metrics"][name][key] == {"value": round(value, 2), "chance": round(chance, 2)}
        for fig in m["figures"]:
            assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({fig})" in report
    assert "METEOR not computed: switched off" in report and "SPICE not computed" in report
    assert metrics["bad_input"]["rows_seen"] > 0 and metrics["bad_input"]["rows_skipped"] == 0
    assert "## Bad input" in report


def _decoded(src: SourceConfig, decode: DecodeConfig) -> dict:
    rows = read_manifest(src)
    out, _ = RowDecoder([src], decode, src.modality, train=False)(next(row_batches(rows, len(rows))))
    return out


@torch.no_grad()
def test_retrieval_numbers_are_the_models(evaluated, tiny_export):
    job, _, _, metrics, _ = evaluated
    model = load_export(tiny_export)
    for name in ("image_text", "video_text"):
        src = _source(job, name)
        batch = _decoded(src, job.data.decode)
        pixels, ids, mask = (torch.from_numpy(batch[k]) for k in ("pixels", "input_ids", "attention_mask"))
        visual_out = model.visual_features(pixels, src.modality)
        v = model.project_visual(visual_out.pooled_BD).numpy()
        t = model.encode_text(ids, mask).numpy()
        uri = {r.row_key: r.uri for r in read_manifest(src)}
        reps, text_to_item = items_and_captions([uri[str(k)] for k in batch["row_key"]])
        sim_TV = t @ v[reps].T
        got = metrics["sources"][name]["tasks"]["retrieval"]
        want = recall_metrics(ranks(sim_TV, [{i} for i in text_to_item]))
        assert got["contrastive"]["text_to_visual"] == pytest.approx(want, abs=1e-9)

        # re-ranking, with the matching head scored here on every pair
        def head(q, g):
            tokens = visual_out.tokens_BSD[[reps[i] for i in g]]
            return model.match_logits(tokens, ids[q], mask[q]).softmax(-1)[:, 1].numpy()

        want_re = recall_metrics(ranks(rerank(sim_TV, RERANK_K, head), [{i} for i in text_to_item]))
        assert got["reranked"]["text_to_visual"] == pytest.approx(want_re, abs=1e-9)
        captions_of = [{t for t, i in enumerate(text_to_item) if i == v} for v in range(len(reps))]

        def head_vt(q, g):
            tokens = visual_out.tokens_BSD[[reps[i] for i in q]]
            return model.match_logits(tokens, ids[g], mask[g]).softmax(-1)[:, 1].numpy()

        want_vt = recall_metrics(ranks(rerank(sim_TV.T, RERANK_K, head_vt), captions_of))
        assert got["reranked"]["visual_to_text"] == pytest.approx(want_vt, abs=1e-9)
        assert got["rerank_k"] == RERANK_K


@torch.no_grad()
def test_zero_shot_and_linear_probe_numbers_are_the_models(evaluated, tiny_export):
    job, _, _, metrics, _ = evaluated
    model = load_export(tiny_export)
    tok = load_tokenizer(job.data.decode.tokenizer)
    src = _source(job, "image_label")
    batch = _decoded(src, job.data.decode)
    cls = model.visual_features(torch.from_numpy(batch["pixels"]), "image").pooled_BD
    visual = model.project_visual(cls).numpy()
    classes = sorted({r.label for r in read_manifest(src)})
    templates = src.prompt_templates()
    class_emb = []
    for c in classes:
        ids, mask = tokenize(tok, [t.format(c) for t in templates], job.data.decode.text_max_length)
        e = model.encode_text(torch.as_tensor(ids), torch.as_tensor(mask)).numpy().mean(0)
        class_emb.append(e / np.linalg.norm(e))
    truth = [classes.index(next(c for c in classes if label_id_for_class(c) == l)) for l in batch["label_id"]]
    pred = (visual @ np.stack(class_emb).T).argmax(1)
    zs = metrics["sources"]["image_label"]["tasks"]["zero_shot"]
    assert zs["accuracy"]["top1"] == pytest.approx(100 * np.mean(pred == np.array(truth)))
    assert np.trace(np.array(zs["confusion"])) == int((pred == np.array(truth)).sum())

    train_src = src.model_copy(update={"manifest": job.eval.probe_train["image_label"]})
    train = _decoded(train_src, job.data.decode)
    train_feats = model.visual_features(torch.from_numpy(train["pixels"]), "image").pooled_BD.numpy()
    name = {label_id_for_class(c): c for c in classes + [r.label for r in read_manifest(train_src)]}
    want = linear_probe(train_feats, [name[int(l)] for l in train["label_id"]], cls.numpy(),
                        [name[int(l)] for l in batch["label_id"]])
    got = metrics["sources"]["image_label"]["tasks"]["linear_probe"]
    assert got["accuracy"] == pytest.approx(want["accuracy"]) and got["train_rows"] == len(train["label_id"])


@torch.no_grad()
def test_generated_answers_and_captions_are_the_models(evaluated, tiny_export):
    job, out, _, metrics, _ = evaluated
    model = load_export(tiny_export)
    tok = load_tokenizer(job.data.decode.tokenizer)
    for name in ("image_qa", "video_qa"):
        src = _source(job, name)
        records = [json.loads(line) for line in (out / f"{name}_answers.jsonl").read_text().splitlines()]
        assert len(records) == len(read_manifest(src))
        got = metrics["sources"][name]["tasks"]["qa"]
        want = qa_accuracy([r["generated"] for r in records], [r["answer"] for r in records],
                           [r["qtype"] for r in records])
        assert got["accuracy"] == pytest.approx(want["accuracy"]) and got["per_type"] == want["per_type"]
        # the answers are what the model writes after "question: {q} answer:" (greedy, 4 tokens)
        batch = _decoded(src, job.data.decode)
        for i in range(3):
            p = int(batch["prompt_len"][i])
            new = model.generate(torch.from_numpy(batch["pixels"][i:i + 1]), src.modality,
                                 prompt_ids=torch.from_numpy(batch["input_ids"][i, 1:p]), max_new_tokens=4)
            assert " ".join(tok.decode(new[0].tolist(), skip_special_tokens=True).split()) == records[i]["generated"]
    for name in ("image_text", "video_text"):
        preds = [json.loads(line) for line in (out / f"{name}_captions.jsonl").read_text().splitlines()]
        want = caption_metrics({p["item"]: p["references"] for p in preds}, {p["item"]: p["generated"] for p in preds},
                               java=False)
        scores = metrics["sources"][name]["tasks"]["captioning"]["scores"]
        assert scores["BLEU-4"] == pytest.approx(want["BLEU-4"]) and scores["CIDEr"] == pytest.approx(want["CIDEr"])
        assert scores["METEOR"] is None


def test_ray_embeddings_equal_single_process(ray_local, eval_corpus, tiny_export):
    decode = DecodeConfig(**{k: v for k, v in eval_spec(eval_corpus, tiny_export, eval_corpus, ["retrieval"])
                             ["data"]["decode"].items()})
    for dataset, modality in (("image_text", "image"), ("video_text", "video")):
        src = SourceConfig(name=dataset, manifest=str(eval_corpus / dataset / "val.jsonl"), modality=modality)
        remote = ev.RayPass(decode, tiny_export, batch_size=4, use_gpu=False).embed(EvalSource.read(src))
        local = ev.embed_locally(src, decode, tiny_export, batch_size=5)
        order_r, order_l = np.argsort(remote.label_id_N), np.argsort(local.label_id_N)
        assert len(order_r) == len(read_manifest(src)) > 2
        assert np.array_equal(remote.label_id_N[order_r], local.label_id_N[order_l])
        for field in ("visual_NE", "text_NE", "features_ND"):
            np.testing.assert_allclose(getattr(remote, field)[order_r], getattr(local, field)[order_l], atol=1e-5)
        assert [remote.text_N[i] for i in order_r] == [local.text_N[i] for i in order_l]


def test_ray_actors_run_at_the_spec_precision(ray_local, eval_corpus, tiny_export, monkeypatch, tmp_path):
    """`eval.precision` reaches the actor pools: `run_job` hands it to the media pass, and a bf16 pass in Ray
    actors (embeddings, captions on the same pixels) is within bf16 rounding of fp32 in this process, not equal."""
    handed = {}
    monkeypatch.setattr(ev, "run_evaluation", lambda job, make_pass, device: handed.update(media=make_pass("e")))
    ev.run_job(validate_spec(eval_spec(eval_corpus, tiny_export, tmp_path, ["retrieval"], precision="bf16")))
    assert handed["media"].precision == "bf16" and handed["media"]._actor_kwargs("image")["precision"] == "bf16"

    decode = DecodeConfig(**eval_spec(eval_corpus, tiny_export, tmp_path, ["retrieval"])["data"]["decode"])
    src = SourceConfig(name="image_text", manifest=str(eval_corpus / "image_text" / "val.jsonl"), modality="image")
    remote = ev.RayPass(decode, tiny_export, batch_size=4, use_gpu=False, precision="bf16").embed(
        EvalSource.read(src), caption=GenerationSettings(max_new_tokens=2))
    local = ev.embed_locally(src, decode, tiny_export, batch_size=5)
    order_r, order_l = np.argsort(remote.row_key_N), np.argsort(local.row_key_N)
    assert len(remote.generated) == remote.rows == local.rows > 2
    for field in ("visual_NE", "text_NE"):
        a, b = getattr(local, field)[order_l], getattr(remote, field)[order_r]
        cosine_N = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine_N.min() > 0.99 and np.abs(a - b).max() > 1e-4, field  # fp32 Ray vs local agree to 1e-5


def test_checkpoint_that_does_not_match_the_spec_is_named(eval_corpus, tiny_export, tmp_path):
    raw = eval_spec(eval_corpus, tiny_export, tmp_path / "o", ["retrieval"])
    raw["model"]["image_size"] = 64
    with pytest.raises(ValueError, match=r"model\.image_size: the spec says 64 but checkpoint .* trained with 32"):
        ev.run_job(validate_spec(raw))
    raw = eval_spec(eval_corpus, tiny_export, tmp_path / "o", ["retrieval"])
    raw["model"] = {"size": "small"}
    with pytest.raises(ValueError, match=r"model\.size: the spec says 'small' but checkpoint .* 'tiny'"):
        ev.run_job(validate_spec(raw))
    assert not (tmp_path / "o").exists()


def test_several_captions_per_item_are_one_gallery_entry(ray_local, eval_corpus, tiny_export, tmp_path):
    """Every image twice in the manifest with two different captions: items are the distinct files, and an
    image's retrieval counts either caption."""
    rows = [json.loads(line) for line in (eval_corpus / "image_text" / "test.jsonl").read_text().splitlines()]
    manifest = tmp_path / "two_captions.jsonl"
    doubled = []
    for r in rows:
        path = str(eval_corpus / "image_text" / r["path"])
        doubled += [{"path": path, "text": r["text"]}, {"path": path, "text": f"there is a {r['shape']} here"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in doubled))
    raw = eval_spec(eval_corpus, tiny_export, tmp_path / "out", ["retrieval"], rerank_k=3)
    raw["data"]["sources"] = [{"name": "two", "manifest": str(manifest), "modality": "image", "kind": "text"}]
    raw["eval"]["probe_train"] = {}
    ev.run_job(validate_spec(raw))
    got = json.loads((tmp_path / "out" / "metrics.json").read_text())["sources"]["two"]
    assert got["tasks"]["retrieval"]["items"] == len(rows) and got["rows"] == 2 * len(rows)

    src = SourceConfig(name="two", manifest=str(manifest), modality="image")
    emb = ev.embed_locally(src, DecodeConfig(**raw["data"]["decode"]), tiny_export)
    uri = {f"two:two_captions.jsonl:{i}": d["path"] for i, d in enumerate(doubled)}
    reps, text_to_item = items_and_captions([uri[k] for k in emb.row_key_N])
    sim_VT = emb.visual_NE[reps] @ emb.text_NE.T
    captions_of = [{t for t, i in enumerate(text_to_item) if i == v} for v in range(len(reps))]
    assert all(len(c) == 2 for c in captions_of)
    want = recall_metrics(ranks(sim_VT, captions_of))
    assert got["tasks"]["retrieval"]["contrastive"]["visual_to_text"] == pytest.approx(want, abs=1e-9)
    assert got["table"]["image->text R@1"][1] == pytest.approx(200 / (2 * len(rows)))  # 2 matches among 2n texts
