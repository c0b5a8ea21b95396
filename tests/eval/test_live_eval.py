"""Evaluation during training (`omnivl.eval.live`): R@1 and zero-shot top-1 against hand-computed cases, chance
levels, decoding a held-out set, a tiny model end to end, the spec section, and how eval records sit among step
records (console line, curves, dedupe)."""

from __future__ import annotations

import numpy as np
import pytest

from omnivl.eval import live
from omnivl.spec.errors import SpecError
from omnivl.spec.loader import validate_spec
from torch_fixtures import _frugal_torch  # noqa: F401  (one thread, fixed seed)

# the decode settings of tests/eval/conftest.py's corpus (32 px, 4 frames); not imported: `conftest` is ambiguous
# when several test directories are collected together
DECODE = {"image_size": 32, "num_frames": 4, "text_max_length": 24}


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------ metrics


def test_retrieval_r1_on_a_hand_built_case():
    # 3 images; captions 0 and 1 describe image 0, caption 2 image 1, caption 3 image 2
    visual_IE = np.eye(3)
    text_NE = _unit([[1, 0.1, 0], [0.2, 1, 0], [0, 0.9, 0.5], [0, 0, 1]])
    out = live.retrieval_r1(visual_IE, text_NE, [0, 0, 1, 2], "image")
    # text->image: captions 0, 2, 3 find their image first; caption 1 prefers image 1 -> 3 of 4
    assert out["t2i_r1"] == pytest.approx(75.0)
    assert out["t2i_r1_chance"] == pytest.approx(100 / 3)  # 1 of 3 images
    # image->text: image 0's best text is caption 0 (its own), image 1's is caption 1 (image 0's), image 2's is 3
    assert out["i2t_r1"] == pytest.approx(200 / 3)
    # 4 captions, 4/3 matches per image on average: 1 - (1 - 4/3/4) = 1/3
    assert out["i2t_r1_chance"] == pytest.approx(100 / 3)
    assert set(live.retrieval_r1(visual_IE, text_NE, [0, 0, 1, 2], "video")) == \
        {"t2v_r1", "t2v_r1_chance", "v2t_r1", "v2t_r1_chance"}


def test_zero_shot_top1_uses_the_prompt_ensemble():
    # 2 classes x 2 prompts (class-major); class 1's prompts average to the y axis
    prompt_TE = _unit([[1, 0], [1, 0.2], [0.5, 1], [-0.5, 1]])
    visual_NE = _unit([[1, 0.1], [0.1, 1], [0.9, 0.5], [1, -1]])
    out = live.zero_shot_top1(visual_NE, prompt_TE, truth=[0, 1, 1, 0], num_classes=2)
    # predictions: 0, 1, 0 (x dominates), 0 -> 3 of 4 right
    assert out == {"zeroshot_top1": pytest.approx(75.0), "zeroshot_top1_chance": pytest.approx(50.0)}


def test_due_every_n_steps_and_at_the_end():
    assert [s for s in range(1, 11) if live.due(s, 10, 4)] == [4, 8, 10]
    assert [s for s in range(1, 4) if live.due(s, 3, 50)] == [3]


# ------------------------------------------------------------------------------------------ data and model


@pytest.fixture(scope="module")
def held_outs(eval_corpus):
    from omnivl.data.config import DecodeConfig, SourceConfig

    decode = DecodeConfig.model_validate(DECODE)
    srcs = [SourceConfig(name=d, manifest=str(eval_corpus / d / "test.jsonl"), modality=d.split("_")[0],
                         kind=d.split("_")[1]) for d in ("image_text", "image_label", "video_text")]
    return [live.decode_held_out(s, decode, max_items=6, batch_size=4) for s in srcs]


def test_held_out_sets_are_decoded_for_evaluation(held_outs, eval_corpus):
    from omnivl.data.manifest import read_manifest
    from omnivl.data.text import label_id_for_class

    text, label, video = held_outs
    assert text.rows == 6 and text.batch["pixels"].shape == (6, 3, 32, 32)
    assert video.batch["pixels"].shape == (video.rows, 4, 3, 32, 32)
    # gallery items are media files; every row of the manifest head is a caption of one of them
    rows = {r.row_key: r for r in read_manifest(_src(eval_corpus, "image_text"), limit=6)}
    uris = [rows[str(k)].uri for k in text.batch["row_key"]]
    assert [uris[i] for i in text.item_rows] == list(dict.fromkeys(uris))
    assert all(uris[n] == uris[text.item_rows[i]] for n, i in enumerate(text.text_to_item))
    # label rows: truth indexes every class of the source (sorted); P prompts per class, class-major
    assert label.classes == sorted(label.classes) and len(label.classes) >= 2
    assert [label_id_for_class(label.classes[t]) for t in label.truth] == label.batch["label_id"].tolist()
    templates = 3
    assert label.prompt_ids.shape == (len(label.classes) * templates, DECODE["text_max_length"])


def _src(corpus, name):
    from omnivl.data.config import SourceConfig

    return SourceConfig(name=name, manifest=str(corpus / name / "test.jsonl"), modality=name.split("_")[0],
                        kind=name.split("_")[1])


def test_a_source_with_nothing_decodable_is_named(tmp_path):
    from omnivl.data.config import DecodeConfig, SourceConfig

    (tmp_path / "m.jsonl").write_text('{"path": "missing.jpg", "text": "a cat"}\n')
    src = SourceConfig(name="held", manifest=str(tmp_path / "m.jsonl"), modality="image", kind="text")
    with pytest.raises(ValueError, match="'held'.*0 of its first 1 rows"):
        live.decode_held_out(src, DecodeConfig.model_validate(DECODE), 8)


def test_tiny_model_metrics_are_the_embeddings_and_restore_train_mode(held_outs, tiny_export):
    from omnivl.eval import inference
    from omnivl.eval.retrieval import bidirectional
    from omnivl.models.export import load_export

    model = load_export(tiny_export)
    model.train()
    out = live.evaluate(model, held_outs, batch_size=4)
    assert model.training  # put back as it was
    assert out["eval_seconds"] >= 0
    text, label, video = held_outs
    assert out["eval_image_text_items"] == 6 and out["eval_video_text_items"] == video.rows
    assert set(k for k in out if k.startswith("eval_image_text_")) == {
        "eval_image_text_items", "eval_image_text_t2i_r1", "eval_image_text_t2i_r1_chance",
        "eval_image_text_i2t_r1", "eval_image_text_i2t_r1_chance"}
    assert "eval_video_text_t2v_r1" in out and "eval_video_text_v2t_r1_chance" in out
    assert out["eval_image_label_zeroshot_top1_chance"] == pytest.approx(100 / len(label.classes))
    # the same numbers from the embeddings computed directly, in eval mode
    model.eval()
    emb = inference.embed_batch(model, text.batch, "image")
    expected = bidirectional(emb["visual"][text.item_rows] @ emb["text_emb"].T, text.text_to_item)
    assert out["eval_image_text_t2i_r1"] == pytest.approx(expected["text_to_visual"]["R@1"])
    assert out["eval_image_text_i2t_r1"] == pytest.approx(expected["visual_to_text"]["R@1"])
    lemb = inference.embed_batch(model, label.batch, "image")
    prompts = inference.encode_texts(model, label.prompt_ids, label.prompt_mask)
    want = live.zero_shot_top1(lemb["visual"], prompts, label.truth, len(label.classes))["zeroshot_top1"]
    assert out["eval_image_label_zeroshot_top1"] == pytest.approx(want)
    for k, v in out.items():
        if k.endswith("_r1") or k.endswith("_top1"):
            assert 0.0 <= v <= 100.0


def test_evaluation_during_training_can_run_at_bf16(held_outs, tiny_export, monkeypatch):
    """`live.evaluate(precision=...)` reaches every forward pass (visual and text embeddings, class prompts); the
    default stays fp32, so training's call is unchanged."""
    import sys

    from omnivl.eval import inference
    from omnivl.models.export import load_export

    model = load_export(tiny_export)
    seen, autocast = [], inference._autocast
    monkeypatch.setattr(inference, "_autocast", lambda m, precision: seen.append(
        (sys._getframe(1).f_code.co_name, precision)) or autocast(m, precision))
    fp32 = live.evaluate(model, held_outs, batch_size=4)
    assert {p for _, p in seen} == {"fp32"}
    seen.clear()
    bf16 = live.evaluate(model, held_outs, batch_size=4, precision="bf16")
    assert set(seen) == {("embed_batch", "bf16"), ("encode_texts", "bf16")}
    assert set(bf16) == set(fp32) and all(0.0 <= bf16[k] <= 100.0 for k in bf16 if k.endswith(("_r1", "_top1")))


# ------------------------------------------------------------------------------------------ records


def _eval_record(step=4):
    return live.eval_record("image", 0, step, 8, {
        "eval_held_t2i_r1": 50.0, "eval_held_t2i_r1_chance": 12.5, "eval_held_i2t_r1": 25.0,
        "eval_held_i2t_r1_chance": 12.5, "eval_held_items": 8, "eval_shape_names_zeroshot_top1": 62.5,
        "eval_shape_names_zeroshot_top1_chance": 25.0, "eval_seconds": 1.25})


def test_console_line():
    from omnivl.train.metrics import eval_line

    assert eval_line(_eval_record()) == ("[image 4/8] eval: held t→i R@1 50.0 (chance 12.5), i→t R@1 25.0 "
                                         "(chance 12.5) · shape_names zero-shot top-1 62.5 (chance 25.0) · 1.2s")


def _step_record(step):
    return {"stage": "image", "stage_index": 0, "step": step, "total_steps": 8, "modality": "image", "lr": 1e-4,
            "loss": 1.0, "samples_per_s": 3.0, "data_wait_frac": 0.1, "time": 0.0}


def test_eval_records_are_not_step_records(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from omnivl.train.stages import dedupe
    from omnivl.train.metrics import is_eval, plot_curves, step_records

    records = [_step_record(s) for s in range(1, 5)] + [_eval_record(4)] + [_step_record(4), _eval_record(4)]
    kept = dedupe(records)  # a restart logged step 4 and its evaluation twice: one of each stays
    assert [(r["step"], is_eval(r)) for r in kept] == [(1, False), (2, False), (3, False), (4, False), (4, True)]
    assert [r["step"] for r in step_records(kept)] == [1, 2, 3, 4]

    titles = {}  # the panels (and their lines) of each figure, read just before plot_curves closes it
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: titles.setdefault(fig._suptitle.get_text(), {
        ax.get_title(): [line.get_label() for line in ax.lines] for ax in fig.axes if ax.get_title()}) and close(fig))
    assert plot_curves(kept, tmp_path / "a.png", "with eval").stat().st_size > 0
    assert plot_curves(step_records(kept), tmp_path / "b.png", "steps only").stat().st_size > 0
    panel = titles["with eval"]["eval during training (held-out, %)"]
    assert [label for label in panel if not label.startswith("_")] == ["held t→i R@1", "held i→t R@1",
                                                                     "shape_names zero-shot top-1"]
    assert len(panel) == 6  # each with its dotted chance line
    assert "eval during training (held-out, %)" not in titles["steps only"]
    assert titles["with eval"]["loss"] == titles["steps only"]["loss"] == ["loss"]  # one line: no 'None' modality


# ------------------------------------------------------------------------------------------ spec


def _train_spec(corpus, **section):
    src = lambda name, split="train", **kw: {"name": name, "manifest": str(corpus / name / f"{split}.jsonl"),
                                             "modality": name.split("_")[0], "kind": name.split("_")[1], **kw}
    raw = {"kind": "pretrain", "name": "t", "model": {"size": "tiny"},
           "data": {"sources": [src("image_text")]},
           "stages": [{"name": "image", "sources": ["image_text"], "steps": 8, "batch_size": {"image": 8}}]}
    if section is not None:
        raw["eval_during_training"] = {"every_steps": 4, "sources": [src("image_text", "test"),
                                                                    src("image_label", "test")], **section}
    return raw


def test_off_by_default_and_a_full_section_validates(eval_corpus):
    raw = _train_spec(eval_corpus)
    del raw["eval_during_training"]
    assert validate_spec(raw).eval_during_training is None
    job = validate_spec(_train_spec(eval_corpus, max_items=32))
    cfg = job.eval_during_training
    assert (cfg.every_steps, cfg.max_items, cfg.tasks) == (4, 32, ["retrieval", "zero_shot"])
    assert validate_spec({**_train_spec(eval_corpus), "kind": "finetune", "init": "x", "task": "retrieval"})


@pytest.mark.parametrize("mutate,path,message", [
    (lambda s: s.update(every_steps=0), "eval_during_training.every_steps", "must be >= 1, got 0"),
    (lambda s: s.update(max_items=5000), "eval_during_training.max_items", "1024"),
    (lambda s: s.update(sources=[]), "eval_during_training.sources", "at least 1"),
    (lambda s: s.update(evry_steps=3), "eval_during_training.evry_steps", "every_steps"),
    (lambda s: s["sources"][1].update(kind="qa"), "eval_during_training.sources[1].kind", "retrieval needs captions"),
    (lambda s: s.update(tasks=["retrieval"]), "eval_during_training.sources[1].kind",
     "a label source gives none of tasks ['retrieval']"),
    (lambda s: s.update(sources=s["sources"][:1]), "eval_during_training.tasks[1]",
     "zero_shot needs class labels (a source of kind label)"),
    (lambda s: s["sources"][1].update(name="image_text"), "eval_during_training.sources[1].name", "duplicate"),
    (lambda s: s["sources"][0].update(manifest=s["sources"][0]["manifest"].replace("test.jsonl", "train.jsonl")),
     "eval_during_training.sources[0].manifest", "trained on by stages[0] (source 'image_text')"),
    (lambda s: s.update(tasks=["linear_probe"]), "eval_during_training.tasks[0]", "zero_shot"),
])
def test_mistakes_are_named(eval_corpus, mutate, path, message):
    raw = _train_spec(eval_corpus)
    mutate(raw["eval_during_training"])
    with pytest.raises(SpecError) as e:
        validate_spec(raw)
    text = str(e.value)
    assert path in text and message in text, text
