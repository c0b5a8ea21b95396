"""The serving library without Ray: bodies, media, limits, auth, the batched model functions, the gallery, the
frontend over an in-process backend, the config files and the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from inprocess_backend import InProcessBackend
from serve_helpers import app_args

from omnivl.serving import engine
from omnivl.serving.auth import check_bearer, resolve_api_key
from omnivl.serving.body import parse_body, read_capped
from omnivl.serving.config import AuthConfig, ServeAppConfig
from omnivl.serving.errors import STATUS, ServeError
from omnivl.serving.media import (DecodedMedia, Geometry, check_uri, decode_media, in_item_order, media_bytes,
                                  sniff_modality, stack_by_modality)
from omnivl.serving.schemas import Media

ROOT = Path(__file__).resolve().parents[2]


def kind_of(fn, *args, **kw) -> str:
    with pytest.raises(ServeError) as exc:
        fn(*args, **kw)
    assert exc.value.message and exc.value.status == STATUS[exc.value.kind]
    return exc.value.kind


# ---- bodies --------------------------------------------------------------------------------------------------


def _multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[str, bytes]:
    out = b""
    for name, data, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--BND\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return "multipart/form-data; boundary=BND", out + b"--BND--\r\n"


def test_json_and_multipart_bodies():
    assert parse_body("application/json; charset=utf-8", b'{"texts": ["a"]}') == ({"texts": ["a"]}, {})
    ctype, body = _multipart([("request", b'{"labels": ["x", "y"]}', None), ("file", b"\xff\xd8\xffdata", "a.jpg")])
    assert parse_body(ctype, body) == ({"labels": ["x", "y"]}, {"file": b"\xff\xd8\xffdata"})
    ctype, body = _multipart([("file", b"abc", "a.jpg")])
    assert parse_body(ctype, body) == ({}, {"file": b"abc"})


@pytest.mark.parametrize("ctype,body,kind", [
    ("text/plain", b"hi", "unsupported_content_type"),
    (None, b"{}", "unsupported_content_type"),
    ("application/json", b"{oops", "malformed_json"),
    ("application/json", b"[1, 2]", "malformed_json"),
    ("application/json", b'{"texts": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "malformed_json"),  # too deep
    (*_multipart([("colour", b"red", None)]), "invalid_request"),
    (*_multipart([("request", b"not json", None)]), "malformed_json"),
])
def test_bad_bodies(ctype, body, kind):
    assert kind_of(parse_body, ctype, body) == kind


def test_body_size_is_capped_by_header_and_by_bytes_read():
    async def chunks(n):
        for _ in range(n):
            yield b"x" * 100

    assert asyncio.run(read_capped(chunks(3), "300", 300)) == b"x" * 300
    for declared, n in (("301", 0), (None, 4)):
        with pytest.raises(ServeError) as exc:
            asyncio.run(read_capped(chunks(n), declared, 300))
        assert exc.value.kind == "payload_too_large" and exc.value.status == 413


# ---- media ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import make_item

    return make_item("image_text", "train", 0, SynthConfig())[1]


def test_sniff_modality(jpeg):
    assert sniff_modality(jpeg) == "image"
    assert sniff_modality(b"\x00\x00\x00\x20ftypisom") == "video"
    assert sniff_modality(b"\x89PNG\r\n\x1a\n....") == "image"
    assert sniff_modality(b"hello") is None


def test_uri_prefixes(tmp_path):
    allowed = [str(tmp_path / "media") + "/", "s3://bucket/media/"]
    assert check_uri(str(tmp_path / "media" / "a.jpg"), allowed) == str(tmp_path / "media" / "a.jpg")
    assert check_uri("s3://bucket/media/x/a.jpg", allowed) == "s3://bucket/media/x/a.jpg"
    for uri in (str(tmp_path / "other.jpg"), str(tmp_path / "media" / ".." / "secret"), "s3://bucket/media/../k",
                "s3://bucket/mediaX/a.jpg", "https://example.com/a.jpg", "file:///etc/passwd"):
        assert kind_of(check_uri, uri, allowed) == "uri_not_allowed", uri
    assert kind_of(check_uri, str(tmp_path / "media" / "a.jpg"), []) == "uri_not_allowed"


def test_media_bytes_and_decoding(jpeg, tmp_path):
    g = Geometry(image_size=32, num_frames=2)
    data = media_bytes(Media(data_b64=base64.b64encode(jpeg).decode()), {}, [], 10**6, "m")
    d = decode_media(data, None, g, 10**7, "m")
    assert d.modality == "image" and d.pixels.shape == (3, 32, 32) and d.pixels.dtype == np.uint8
    (tmp_path / "a.jpg").write_bytes(jpeg)
    assert media_bytes(Media(uri=str(tmp_path / "a.jpg")), {}, [str(tmp_path) + "/"], 10**6, "m") == jpeg
    assert kind_of(media_bytes, Media(data_b64="@@@"), {}, [], 10**6, "m") == "undecodable_media"
    assert kind_of(media_bytes, Media(upload="f"), {"g": b"x"}, [], 10**6, "m") == "missing_media"
    assert kind_of(media_bytes, Media(upload="f"), {"f": jpeg}, [], 10, "m") == "payload_too_large"
    assert kind_of(media_bytes, Media(uri=str(tmp_path / "no.jpg")), {}, [str(tmp_path)], 10**6, "m") == \
        "media_unreadable"
    for bad, modality in ((jpeg[: len(jpeg) // 3], None), (b"garbage" * 10, None), (jpeg, "video")):
        assert kind_of(decode_media, bad, modality, g, 10**7, "m") == "undecodable_media"
    assert kind_of(decode_media, jpeg, None, g, 100, "m") == "undecodable_media"  # over max pixels


def test_media_needs_exactly_one_source():
    with pytest.raises(ValueError):
        Media()
    with pytest.raises(ValueError):
        Media(data_b64="eA==", uri="/x")


def test_items_grouped_by_modality_come_back_in_item_order():
    image = lambda v: DecodedMedia("image", np.full((3, 2, 2), v, np.uint8))  # noqa: E731
    video = lambda v: DecodedMedia("video", np.full((4, 3, 2, 2), v, np.uint8))  # noqa: E731
    items = [image(0), video(1), image(2), video(3), image(4)]
    groups = stack_by_modality(items)
    assert list(groups) == ["image", "video"] and groups["video"].positions == [1, 3]
    assert groups["image"].pixels.shape == (3, 3, 2, 2) and groups["video"].pixels[:, 0, 0, 0, 0].tolist() == [1, 3]
    per_group = [g.pixels.reshape(len(g.positions), -1)[:, 0] * 10 for g in groups.values()]  # one row per item
    assert in_item_order(groups, per_group) == [0, 10, 20, 30, 40]
    assert in_item_order(groups, [["a", "c", "e"], ["b", "d"]]) == list("abcde")
    with pytest.raises(ValueError, match="2 results for a group of 3 items"):
        in_item_order(groups, [["a", "c"], ["b", "d"]])
    assert stack_by_modality([]) == {} and in_item_order({}, []) == []


# ---- auth ----------------------------------------------------------------------------------------------------


def test_api_key_from_spec_or_env():
    assert resolve_api_key(AuthConfig(api_key="k", api_key_env="E"), {"E": "e"}) == "k"
    assert resolve_api_key(AuthConfig(api_key_env="E"), {"E": "e"}) == "e"
    assert resolve_api_key(AuthConfig(api_key_env="E"), {}) is None
    assert resolve_api_key(AuthConfig(api_key_env=None), {"OMNIVL_API_KEY": "x"}) is None


def test_bearer_check():
    check_bearer(None, None)  # auth off
    check_bearer("Bearer s3cret", "s3cret")
    check_bearer("bearer s3cret", "s3cret")
    for header in (None, "", "Bearer", "Bearer wrong", "Basic s3cret", "s3cret"):
        assert kind_of(check_bearer, header, "s3cret") == "unauthorized"


# ---- config --------------------------------------------------------------------------------------------------


def test_batches_must_be_able_to_fill():
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        ServeAppConfig(checkpoints={"a": "x"}, max_ongoing_requests=4, batching={"max_batch_size": 8})
    ServeAppConfig(checkpoints={"a": "x"}, max_ongoing_requests=4, batching={"enabled": False, "max_batch_size": 8})
    assert ServeAppConfig(checkpoints={"b": "x", "a": "y"}).default_model == "b"


def test_precision_defaults_to_fp32_and_fp16_needs_a_replica_gpu():
    """The field in a `serve` job and in a Serve config file (both `app.` specs), the fp16 rule naming its path."""
    from omnivl.cli.serve_cmds import load_serve_job
    from omnivl.spec.errors import SpecError

    serve_tiny, local_dev = str(ROOT / "jobs" / "serve_tiny.yaml"), str(ROOT / "serve" / "local-dev.yaml")
    assert load_serve_job(serve_tiny, []).app.precision == "fp32"
    assert load_serve_job(local_dev, ["app.precision=bf16"]).app.precision == "bf16"
    assert load_serve_job(serve_tiny, ["app.precision=fp16", "app.gpus_per_replica=1"]).app.precision == "fp16"
    rule = r"app\.precision: fp16 needs gpus_per_replica > 0 and device auto or cuda"
    with pytest.raises(SpecError, match=rule):
        load_serve_job(serve_tiny, ["app.precision=fp16"])
    with pytest.raises(SpecError, match=rule):  # local-dev.yaml pins device: cpu
        load_serve_job(local_dev, ["app.precision=fp16", "app.gpus_per_replica=1"])


def _serve_apps(doc: dict) -> list[dict]:
    return [{k: v for k, v in app.items()} for app in doc["applications"]]


def test_rayservice_embeds_a_valid_serve_config_equal_to_serve_omnivl_yaml():
    from ray.serve.schema import ServeDeploySchema

    svc = yaml.safe_load((ROOT / "infra" / "kuberay" / "rayservice.yaml").read_text())
    assert svc["kind"] == "RayService" and svc["apiVersion"] == "ray.io/v1"
    embedded = yaml.safe_load(svc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    for app in embedded["applications"]:
        ServeAppConfig.model_validate(app["args"])
    shipped = yaml.safe_load((ROOT / "serve" / "omnivl.yaml").read_text())
    assert _serve_apps(embedded) == _serve_apps(shipped)
    env_var = embedded["applications"][0]["args"]["auth"]["api_key_env"]
    cluster = svc["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:
        envs = pod["template"]["spec"]["containers"][0]["env"]
        assert any(e["name"] == env_var and "secretKeyRef" in e["valueFrom"] for e in envs)


# ---- model side ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(checkpoints) -> engine.LoadedModel:
    torch.set_num_threads(1)
    return engine.load_checkpoint("a", checkpoints["a"], "cpu")


def _pixels(n: int, t: int | None = None, seed: int = 0) -> np.ndarray:
    shape = (n, 3, 64, 64) if t is None else (n, t, 3, 64, 64)
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def test_a_batch_of_calls_equals_the_calls_run_alone(lm):
    calls = [engine.VisualCall(_pixels(2, seed=1), "image"), engine.VisualCall(_pixels(1, 4, seed=2), "video"),
             engine.VisualCall(_pixels(1, seed=3), "image")]
    together = engine.run_visual(lm, calls)
    for call, got in zip(calls, together):
        np.testing.assert_allclose(got, engine.run_visual(lm, [call])[0], atol=1e-5)
    assert [g.shape for g in together] == [(2, 64), (1, 64), (1, 64)]

    ids = np.array([[101, 2000, 102, 0], [101, 3000, 4000, 102]])
    mask = (ids > 0).astype(np.int64)
    m = engine.run_match(lm, [engine.MatchCall(_pixels(1, seed=1), "image", ids[:1], mask[:1]),
                              engine.MatchCall(_pixels(1, seed=2), "image", ids[1:], mask[1:])])
    alone = engine.run_match(lm, [engine.MatchCall(_pixels(1, seed=2), "image", ids[1:], mask[1:])])
    np.testing.assert_allclose(m[1], alone[0], atol=1e-5)


def test_generation_batches_mix_prompts_and_no_prompts(lm):
    opts = engine.decoding_kwargs("greedy", 5, 3, 0.9)
    calls = [engine.GenerateCall(_pixels(1, seed=1), "image", None, opts),
             engine.GenerateCall(_pixels(1, seed=2), "image", np.array([[2054, 3609]]), opts),
             engine.GenerateCall(_pixels(1, seed=3), "image", np.array([[2054]]), opts)]
    together = engine.run_generate(lm, calls)
    for call, got in zip(calls, together):
        assert got == engine.run_generate(lm, [call])[0]
    assert engine.decoding_kwargs("beam", 5, 2, 0.5) == (("max_new_tokens", 5), ("method", "beam"), ("num_beams", 2))


def test_gallery_search_and_bad_rows(lm, corpus, tmp_path):
    from omnivl.serving.gallery import build_gallery

    rows = (corpus / "image_text" / "train.jsonl").read_text().splitlines()[:6]
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not really")
    rows = [json.dumps({**json.loads(r), "path": str(corpus / "image_text" / json.loads(r)["path"])}) for r in rows]
    rows.insert(2, json.dumps({"path": str(tmp_path / "bad.jpg"), "text": "broken"}))
    (tmp_path / "g.jsonl").write_text("\n".join(rows) + "\n")
    embed = lambda px, mod: engine.run_visual(lm, [engine.VisualCall(px, mod)])[0]  # noqa: E731
    g = build_gallery(embed, str(tmp_path / "g.jsonl"), "auto", 64, 4, 100, "bundled:bert-base-uncased", 10**7)
    assert len(g) == 6 and sum(g.skipped.values()) == 1 and 2 not in [it.index for it in g.items]
    own = embed(_gallery_pixels(g.items[3].uri), "image")[0]
    (score, item), *_ = g.search(own, 3)
    assert item.index == g.items[3].index and score > 0.999
    assert len(g.search(own, 100)) == 6


def _gallery_pixels(uri: str) -> np.ndarray:
    from omnivl.data.image import decode_image, eval_image

    return eval_image(decode_image(Path(uri).read_bytes(), draft_size=64)[0], 64)[None]


# ---- frontend over an in-process backend ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def frontend(lm, checkpoints):
    from omnivl.serving.frontend import Frontend, model_summary

    cfg = ServeAppConfig(checkpoints={"a": checkpoints["a"]}, limits={"max_new_tokens": 4, "max_labels": 6})
    return Frontend(cfg, InProcessBackend(lm), {"a": model_summary(checkpoints["a"])})


def test_frontend_requests(frontend, jpeg):
    run = lambda ep, body, up=None, hdr=None: asyncio.run(frontend.handle(ep, body, up or {}, hdr))  # noqa: E731
    out, model = run("classify", {"labels": ["circle", "square"]}, {"file": jpeg})
    assert model == "a" and {x["label"] for x in out["labels"]} == {"circle", "square"}
    out, _ = run("caption", {}, {"file": jpeg})  # default max_new_tokens (20) lowered to the server's 4
    assert isinstance(out["caption"], str) and len(out["caption"].split()) <= 4
    out, _ = run("embed", {"texts": ["a", "b"]})
    assert np.asarray(out["text_embeddings"]).shape == (2, 64) and out["media_embeddings"] == []
    for endpoint, body, uploads, hdr, kind in [
        ("search", {"text": "x"}, None, None, "search_unavailable"),
        ("caption", {"decoding": {"max_new_tokens": 5}}, {"file": jpeg}, None, "out_of_range"),
        ("classify", {"labels": list("abcdefg")}, {"file": jpeg}, None, "too_many_items"),
        ("caption", {}, {"f1": jpeg, "f2": jpeg}, None, "missing_media"),
        ("embed", {}, None, None, "missing_media"),
        ("embed", {"texts": ["x"]}, None, "b", "unknown_checkpoint"),
        ("match", {"pairs": [{"text": "x"}]}, None, None, "missing_media"),
    ]:
        with pytest.raises(ServeError) as exc:
            run(endpoint, body, uploads, hdr)
        assert exc.value.kind == kind, (endpoint, body, exc.value)


def test_openapi_schema_builds_offline():
    from omnivl.serving.http import build_api

    spec = build_api(None).openapi()
    assert {f"/v1/{n}" for n in ("embed", "match", "classify", "caption", "answer", "search")} <= set(spec["paths"])
    assert "Media" in spec["components"]["schemas"] and "ErrorResponse" in spec["components"]["schemas"]


# ---- CLI -----------------------------------------------------------------------------------------------------


def _parser():
    import argparse

    from omnivl.cli import _group, serve_cmds

    parser = argparse.ArgumentParser(prog="omnivl")
    top = parser.add_subparsers(dest="command", required=True)
    serve_cmds.register({"top": top, "bench": _group(top, "bench", "benchmarks")})
    return parser


def test_cli_parses_and_loads_serve_specs_and_serve_config_files():
    from omnivl.cli.serve_cmds import cmd_bench, cmd_serve, load_serve_job

    p = _parser()
    args = p.parse_args(["serve", "jobs/serve_tiny.yaml", "--set", "port=9001", "--address", "ray://x:10001"])
    assert args.func is cmd_serve and args.overrides == ["port=9001"]
    assert p.parse_args(["bench", "serve", "--requests", "10", "--concurrency", "1,16"]).func is cmd_bench
    bench = p.parse_args(["bench", "serve", "--size", "small", "--cold-requests", "50"])
    assert bench.size == "small" and bench.cold_requests == 50 and bench.cold_concurrency == 4
    with pytest.raises(SystemExit):
        p.parse_args(["bench", "serve", "--size", "base"])  # only sizes a CPU can serve in a benchmark
    job = load_serve_job(str(ROOT / "jobs" / "serve_tiny.yaml"), ["port=9001"])
    assert job.port == 9001 and job.app.default_model == "tiny"
    job = load_serve_job(str(ROOT / "serve" / "local-dev.yaml"), ["app.batching.max_batch_size=8"])
    assert job.host == "127.0.0.1" and job.port == 8000 and job.app.batching.max_batch_size == 8


def test_serve_names_a_missing_checkpoint_or_gallery_before_starting_ray(tmp_path):
    """`omnivl serve` of a spec whose export or gallery is not there: exit 2 and one line per missing path,
    naming the field, before any Ray (a replica's traceback used to be the only message)."""
    import subprocess
    import sys

    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")  # no weights
    result = subprocess.run(
        [sys.executable, "-m", "omnivl", "serve", "jobs/serve_tiny.yaml",
         "--set", f"app.checkpoints.tiny={export}", "--set", f"app.gallery_manifest={tmp_path / 'nope.jsonl'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"app.checkpoints.tiny: {export} has no model.safetensors" in result.stderr, result.stderr
    assert f"app.gallery_manifest: {tmp_path / 'nope.jsonl'} does not exist" in result.stderr, result.stderr
    assert "deploying" not in result.stdout  # nothing started


def test_missing_local_inputs_accepts_an_export_and_skips_s3(tmp_path):
    from omnivl.serving.config import EXPORT_FILES, missing_local_inputs

    for name in EXPORT_FILES:
        (tmp_path / name).write_text("x")
    cfg = ServeAppConfig(checkpoints={"a": str(tmp_path), "b": "s3://bucket/run/export"},
                         gallery_manifest="s3://bucket/gallery.jsonl")
    assert missing_local_inputs(cfg) == []
    missing = missing_local_inputs(ServeAppConfig(checkpoints={"a": str(tmp_path / "gone")}))
    assert [str(i) for i in missing] == [f"app.checkpoints.a: {tmp_path / 'gone'} does not exist (an export: the "
                                         "`export/` directory a pretrain or finetune run writes)"]


def test_gallery_index_is_checked_before_deploy_and_exclusive_with_a_gallery_manifest(tmp_path):
    from pydantic import ValidationError

    from omnivl.embed.config import INDEX_FILES
    from omnivl.serving.config import missing_local_inputs

    with pytest.raises(ValidationError, match="not both"):
        ServeAppConfig(checkpoints={"a": "s3://b/e"}, gallery_manifest="m.jsonl", gallery_index=str(tmp_path))
    (tmp_path / INDEX_FILES[0]).write_text("x")
    issues = missing_local_inputs(ServeAppConfig(checkpoints={"a": "s3://b/e"}, gallery_index=str(tmp_path)))
    assert [str(i) for i in issues] == [f"app.gallery_index: {tmp_path} has no {' / '.join(INDEX_FILES[1:])} (the "
                                        "output directory of an `index` job)"]
    for name in INDEX_FILES:
        (tmp_path / name).write_text("x")
    assert missing_local_inputs(ServeAppConfig(checkpoints={"a": "s3://b/e"}, gallery_index=str(tmp_path))) == []


def test_a_gallery_index_of_another_model_is_refused_at_load(lm, tmp_path):
    import json

    from omnivl.serving.gallery import load_gallery_index
    from omnivl.embed import index as ix
    from omnivl.embed import shards
    from omnivl.embed.config import IndexSettings

    emb = tmp_path / "emb"
    emb.mkdir()
    (emb / shards.IDENTITY_FILE).write_text(json.dumps({"sources": [{"name": "s", "modality": "image"}]}))
    vecs = np.eye(8, 32, dtype=np.float32)  # 32-dim: not the tiny model's 64
    table = shards.shard_table({"row_key": [f"k{i}" for i in range(8)], "uri": [f"u{i}" for i in range(8)],
                                "text": [f"t{i}" for i in range(8)]}, [vecs], None)
    shards.write_shard(table, str(emb / "s" / shards.shard_name(0)))
    ix.build(str(emb), str(tmp_path / "index"), IndexSettings())
    with pytest.raises(ValueError, match="32-dim embeddings but checkpoint .* embeds to 64"):
        load_gallery_index(str(tmp_path / "index"), lm)


# ---- warm-up, greedy batching, readiness -------------------------------------------------------------------------


def test_warm_up_runs_one_call_per_operation_and_modality_of_the_model_geometry(lm, monkeypatch):
    seen = []

    def recording(op, fn):
        def run(lm_, calls):
            seen.append((op, getattr(calls[0], "modality", None), [c.pixels.shape if hasattr(c, "pixels")
                                                                   else c.ids.shape for c in calls]))
            return fn(lm_, calls)
        return run

    monkeypatch.setattr(engine, "OPS", {op: recording(op, fn) for op, fn in engine.OPS.items()})
    seconds = engine.warm_up(lm, text_length=32)
    assert set(seconds) == {"visual_image", "visual_video", "text", "match", "generate"}
    assert all(s > 0 for s in seconds.values())
    assert sorted(seen) == sorted([("visual", "image", [(1, 3, 64, 64)]), ("visual", "video", [(1, 4, 3, 64, 64)]),
                                   ("text", None, [(1, 32)]), ("match", "image", [(1, 3, 64, 64)]),
                                   ("generate", "image", [(1, 3, 64, 64)])])


def _cosine_N(a_NE: np.ndarray, b_NE: np.ndarray) -> np.ndarray:
    return (a_NE * b_NE).sum(1) / (np.linalg.norm(a_NE, axis=1) * np.linalg.norm(b_NE, axis=1))


def test_bf16_operations_stay_close_to_fp32_and_really_autocast(lm, checkpoints):
    """Every operation of a checkpoint loaded at bf16: float32 results within bf16 rounding of fp32 (cosine
    > 0.99, probabilities within 0.02), not bit-identical (the autocast ran); generation gives token ids."""
    low = engine.load_checkpoint("a", checkpoints["a"], "cpu", "bf16")
    image, video = engine.VisualCall(_pixels(3, seed=4), "image"), engine.VisualCall(_pixels(2, 4, seed=5), "video")
    ids = np.array([[101, 2000, 102, 0], [101, 3000, 4000, 102], [101, 2054, 102, 0]])
    mask = (ids > 0).astype(np.int64)
    for op, call in [("visual", image), ("visual", video), ("text", engine.TextCall(ids, mask))]:
        (ref,), (got,) = engine.OPS[op](lm, [call]), engine.OPS[op](low, [call])
        assert got.dtype == np.float32 and _cosine_N(ref, got).min() > 0.99 and np.abs(ref - got).max() > 0, op
    match = engine.MatchCall(image.pixels, "image", ids, mask)
    (ref,), (got,) = engine.run_match(lm, [match]), engine.run_match(low, [match])
    assert got.dtype == np.float32 and 0 < np.abs(ref - got).max() < 0.02
    (rows,) = engine.run_generate(low, [engine.GenerateCall(image.pixels, "image", None,
                                                            engine.decoding_kwargs("beam", 3, 2, 1.0))])
    assert len(rows) == 3 and all(isinstance(t, int) for r in rows for t in r)


def test_a_model_replica_loads_warms_up_and_serves_at_the_config_precision(lm, checkpoints, corpus, monkeypatch):
    """The replica class the Serve seam deploys (in this process, without Serve): `precision: bf16` in its args
    reaches the loaded checkpoint, so the warm-up, the startup gallery and the batched requests all run under bf16."""
    from omnivl.serving.replica import ModelReplica

    class Replica(ModelReplica):  # what `model_deployment` adds, minus Serve's multiplexing decorator
        async def get_model(self, model_id: str) -> engine.LoadedModel:
            return await self.load_model(model_id)

    seen, autocast = [], engine.autocast
    monkeypatch.setattr(engine, "autocast", lambda device, precision: seen.append(precision) or autocast(device,
                                                                                                        precision))
    replica = Replica(app_args({"a": checkpoints["a"]}, corpus, precision="bf16"))
    warm_ups = len(engine.warmup_calls(lm, 32))
    assert replica.preloaded["a"].precision == "bf16" and len(replica.cold_start["warmup_ops_s"]) == warm_ups
    assert len(seen) > warm_ups and set(seen) == {"bf16"}  # the gallery's embedding passes, then the warm-up
    call = engine.VisualCall(_pixels(2, seed=6), "image")
    got = asyncio.run(replica.visual("a", call))
    ref = engine.run_visual(lm, [call])[0]
    assert _cosine_N(ref, got).min() > 0.99 and np.abs(ref - got).max() > 0
    replica.worker.shutdown()


class GatedModel:
    """A `run_batch` for Batcher tests: records each batch; a batch waits for `release` while `gate` is set."""

    def __init__(self, fail_on=None) -> None:
        self.batches: list[list] = []
        self.running = 0
        self.gate: asyncio.Event | None = None
        self.fail_on = fail_on

    async def __call__(self, items: list) -> list:
        assert self.running == 0, "two batches of one operation ran at once"
        self.running += 1
        self.batches.append(list(items))
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)  # a model call takes time (in serving: the model thread), so callers can queue
            if self.fail_on in items:
                raise ValueError(f"bad item {self.fail_on}")
            return [x * 10 for x in items]
        finally:
            self.running -= 1


async def _spin(n: int = 5) -> None:
    """Let the event loop run a few iterations without letting any time pass on a timer."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_batcher_runs_a_lone_call_at_once_and_alone():
    async def main():
        model = GatedModel()
        model.gate = asyncio.Event()
        batcher = engine.Batcher(model, max_batch_size=8)
        call = asyncio.create_task(batcher.submit(1))
        await _spin()  # no timer: the batch has started before any time could pass
        assert model.batches == [[1]]
        model.gate.set()
        return await call

    assert asyncio.run(main()) == 10


def test_batcher_batches_what_queued_while_a_batch_ran_up_to_the_max():
    async def main():
        model = GatedModel()
        model.gate = asyncio.Event()
        batcher = engine.Batcher(model, max_batch_size=3)
        first = asyncio.create_task(batcher.submit(0))
        await _spin()
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
        await _spin()
        assert model.batches == [[0]]  # the others wait for the running batch, not for a timer
        model.gate.set()
        return await first, await asyncio.gather(*rest), model.batches

    first, rest, batches = asyncio.run(main())
    assert first == 0 and rest == [10, 20, 30, 40, 50]
    assert batches == [[0], [1, 2, 3], [4, 5]]


def test_batcher_fails_only_the_failing_batch_and_drops_cancelled_callers():
    async def main():
        model = GatedModel(fail_on=2)
        model.gate = asyncio.Event()
        batcher = engine.Batcher(model, max_batch_size=2)
        a = asyncio.create_task(batcher.submit(1))
        await _spin()
        b, c = asyncio.create_task(batcher.submit(2)), asyncio.create_task(batcher.submit(3))
        gone = asyncio.create_task(batcher.submit(4))
        d = asyncio.create_task(batcher.submit(5))
        await _spin()
        gone.cancel()
        model.gate.set()
        results = await asyncio.gather(a, b, c, d, return_exceptions=True)
        return results, model.batches, batcher.drainer

    results, batches, drainer = asyncio.run(main())
    assert results[0] == 10 and isinstance(results[1], ValueError) and isinstance(results[2], ValueError)
    assert results[3] == 50
    assert batches == [[1], [2, 3], [5]]  # the cancelled caller cost no compute
    assert drainer is None  # idle again: the next lone call starts at once


def test_batcher_under_concurrent_callers_answers_each_once_and_never_overlaps_batches():
    import random

    async def main():
        model = GatedModel()
        batcher = engine.Batcher(model, max_batch_size=4)
        rng = random.Random(0)

        async def caller(i):
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            return await batcher.submit(i)

        results = await asyncio.gather(*(caller(i) for i in range(200)))
        return results, model.batches

    results, batches = asyncio.run(main())
    assert results == [i * 10 for i in range(200)]
    assert sorted(x for b in batches for x in b) == list(range(200))
    assert max(len(b) for b in batches) == 4 and len(batches) < 200  # batching happened, never beyond the max


def _app_status(app_status: str, model_status: str, model_replicas: dict, message: str = ""):
    from ray.serve.schema import ApplicationStatusOverview, DeploymentStatusOverview

    from omnivl.serving.readiness import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT

    deployments = {
        INGRESS_DEPLOYMENT: DeploymentStatusOverview("HEALTHY", "CONFIG_UPDATE_COMPLETED", {"RUNNING": 1}, ""),
        MODEL_DEPLOYMENT: DeploymentStatusOverview(model_status, "CONFIG_UPDATE_STARTED", model_replicas, message)}
    return ApplicationStatusOverview(app_status, "", 0.0, deployments)


def test_app_readiness_is_ready_only_when_the_app_runs_with_warm_model_replicas():
    from omnivl.serving.readiness import MODEL_DEPLOYMENT, app_readiness

    assert app_readiness(None).status == "not_ready"
    deploying = app_readiness(_app_status("DEPLOYING", "UPDATING", {"STARTING": 1}, "1 replica is starting"))
    assert deploying.status == "not_ready"
    assert deploying.reason == (f"application DEPLOYING; {MODEL_DEPLOYMENT} UPDATING, 0 warm replica(s): "
                                "1 replica is starting")
    assert deploying.replicas[MODEL_DEPLOYMENT] == {"STARTING": 1}
    partly = app_readiness(_app_status("DEPLOYING", "UPDATING", {"RUNNING": 1, "STARTING": 1}))
    assert partly.status == "not_ready"  # the target count is not warm yet
    assert app_readiness(_app_status("UNHEALTHY", "UNHEALTHY", {"RUNNING": 1})).status == "not_ready"
    assert app_readiness(_app_status("RUNNING", "HEALTHY", {})).status == "not_ready"  # scaled to zero: none warm
    ready = app_readiness(_app_status("RUNNING", "HEALTHY", {"RUNNING": 2}))
    assert ready.status == "ready" and ready.reason == "2 model replica(s) loaded and warmed up"
    # an autoscaling upscale keeps the app RUNNING; the starting replica gets no traffic until warm
    assert app_readiness(_app_status("RUNNING", "UPSCALING", {"RUNNING": 1, "STARTING": 1})).status == "ready"


def test_readyz_answers_503_with_the_reason_until_ready_and_healthz_stays_cheap():
    from fastapi.testclient import TestClient

    from omnivl.serving.http import build_api
    from omnivl.serving.schemas import ReadyResponse

    state = {"answer": ReadyResponse(status="not_ready", reason="model replicas warming up")}
    calls = []

    async def readiness():
        calls.append(1)
        if isinstance(state["answer"], Exception):
            raise state["answer"]
        return state["answer"]

    client = TestClient(build_api(None, readiness=readiness))
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "not_ready"
    assert r.json()["reason"] == "model replicas warming up"
    assert client.get("/healthz").status_code == 200 and len(calls) == 1  # liveness never asks for readiness
    state["answer"] = RuntimeError("controller unreachable")
    r = client.get("/readyz")
    assert r.status_code == 503 and "controller unreachable" in r.json()["reason"]
    state["answer"] = ReadyResponse(status="ready", reason="1 model replica(s) loaded and warmed up")
    assert client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"200", "503"} <= set(spec["paths"]["/readyz"]["get"]["responses"])
