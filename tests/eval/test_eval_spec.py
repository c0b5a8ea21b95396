"""`evaluate` specs: the new tasks and fields validate, and mistakes are named by their dotted path."""

from __future__ import annotations

import pytest

from conftest import eval_spec
from omnivl.spec.errors import SpecError
from omnivl.spec.loader import validate_spec


def _raw(tmp_path, tasks, **fields):
    return eval_spec(tmp_path, "ckpt", tmp_path / "out", tasks, **fields)


def test_every_task_and_field_validates(tmp_path):
    job = validate_spec(_raw(tmp_path, ["retrieval", "zero_shot", "linear_probe", "captioning", "qa"],
                             rerank_k=8, meteor=False, captioning={"method": "beam", "num_beams": 2},
                             answering={"max_new_tokens": 3}))
    assert job.eval.captioning.method == "beam" and job.eval.answering.max_new_tokens == 3
    assert job.eval.probe_train["image_label"].endswith("image_label/train.jsonl")


@pytest.mark.parametrize("mutate,path,message", [
    (lambda r: r["eval"].update(tasks=["captioning", "bogus"]), "eval.tasks[1]", "captioning"),
    (lambda r: r["eval"]["probe_train"].update(nope="x.jsonl"), "eval.probe_train.nope", "unknown source"),
    (lambda r: r["eval"]["probe_train"].update(image_text="x.jsonl"), "eval.probe_train.image_text",
     "is a text source"),
    (lambda r: r["eval"].update(tasks=["linear_probe"], probe_train={}), "eval.probe_train",
     "needs the train split"),
    (lambda r: r["data"].update(sources=[s for s in r["data"]["sources"] if s["kind"] != "qa"]),
     "eval.tasks[0]", "qa needs a source of kind qa"),
    (lambda r: r["eval"].update(answering={"method": "sample"}), "eval.answering.method", "greedy"),
    (lambda r: r["data"]["sources"][0].update(kind="vqa"), "data.sources[0].kind", "qa"),
    (lambda r: r["eval"].update(precision="fp16"), "eval.precision", "fp16 needs use_gpu: true"),
    (lambda r: r["eval"].update(precision="fp8"), "eval.precision", "must be one of 'fp32', 'bf16' or 'fp16'"),
])
def test_mistakes_are_named(tmp_path, mutate, path, message):
    raw = _raw(tmp_path, ["qa"])
    mutate(raw)
    with pytest.raises(SpecError) as e:
        validate_spec(raw)
    text = str(e.value)
    assert path in text and message in text, text


def test_precision_defaults_to_fp32_and_fp16_runs_on_a_gpu(tmp_path):
    assert validate_spec(_raw(tmp_path, ["qa"])).eval.precision == "fp32"
    assert validate_spec(_raw(tmp_path, ["qa"], precision="bf16")).eval.precision == "bf16"
    assert validate_spec(_raw(tmp_path, ["qa"], precision="fp16", use_gpu=True)).eval.precision == "fp16"


def test_the_precision_names_are_the_ones_autocast_knows():
    """The spec's names (torch-free) and `omnivl.models.precision`'s dtypes are two lists: they must agree."""
    import typing

    from omnivl.models.precision import PRECISIONS
    from omnivl.spec.precision import Precision

    assert list(typing.get_args(Precision)) == list(PRECISIONS)
