"""Broken specs: each error names the dotted path and the problem (DESIGN.md principle 3)."""

import textwrap

import pytest

from omnivl.spec import SpecError, validate_spec
from omnivl.spec.loader import parse_yaml

GOOD = parse_yaml(textwrap.dedent("""
    kind: pretrain
    name: t
    data:
      sources:
        - {name: imgs, manifest: m.jsonl, modality: image, kind: text}
        - {name: vids, manifest: v.jsonl, modality: video, kind: label}
    stages:
      - {name: image, sources: [imgs], steps: 10, batch_size: {image: 8}}
      - {name: joint, sources: [imgs, vids], steps: 10, batch_size: {image: 8, video: 4}}
"""))


def errors_of(raw=None, overrides=()):
    with pytest.raises(SpecError) as info:
        validate_spec(raw if raw is not None else GOOD, overrides, source="t.yaml")
    return [str(i) for i in info.value.issues]


def test_good_spec_loads_with_defaults():
    job = validate_spec(GOOD)
    assert job.stages[1].batch_size.video == 4
    assert job.stages[0].optimizer.weight_decay == 0.05  # the paper's default
    assert job.model.size == "tiny"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # unknown key, with a suggestion and the allowed keys
        (["stages[1].optimzer={lr: 1}"], ["stages[1].optimzer: unknown key; did you mean 'optimizer'?", "allowed:"]),
        # wrong type
        (["stages[0].steps=ten"], ["stages[0].steps:", "valid integer", "'ten'"]),
        # negative batch size
        (["stages[1].batch_size.video=-4"], ["stages[1].batch_size.video: must be >= 0, got -4"]),
        # zero batch size where the stage has that modality
        (["stages[1].batch_size.video=0"], ["stages[1].batch_size.video: must be > 0, got 0"]),
        # bad enum
        (["data.sources[1].modality=audio"], ["data.sources[1].modality: must be one of 'image' or 'video', got 'audio'"]),
        (["model.size=huge"], ["model.size: must be one of 'tiny', 'small' or 'base', got 'huge'"]),
        # cross reference
        (["stages[0].sources=[imgz]"], ["stages[0].sources[0]: unknown source 'imgz'; defined: imgs, vids"]),
        # range checks
        (["scaling.num_workers=[4, 2]"], ["scaling.num_workers: must be >= 0 or a [min, max] range"]),
        (["data.decode.max_bad_fraction=1.5"], ["data.decode.max_bad_fraction: must be <= 1.0, got 1.5"]),
        (["data.sources[0].templates=['no slot']"], ["data.sources[0]: template 'no slot' has no '{}' slot"]),
        # the supervised warm-up classifies class names: a stage of captions only has none
        (["stages[0].loss_weights.cls=1.0"], ["stages[0].loss_weights.cls: is 1.0 but stage 'image' has no label source"]),
        # an elastic range where some worker count does not divide a global batch
        (["scaling.num_workers=[2, 4]"], ["stages[1].batch_size.video: 4 does not split over 3 workers x grad_accum 1 "
                                          "(scaling.num_workers [2, 4]; it splits over 2, 4); set batch_rounding: down"]),
        (["scaling.num_workers=3"], ["stages[0].batch_size.image: 8 does not split over 3 workers x grad_accum 1 "
                                     "(scaling.num_workers 3)"]),
        (["stages[0].grad_accum=3"], ["stages[0].batch_size.image: 8 does not split over 1 workers x grad_accum 3"]),
        (["batch_rounding=down", "scaling.num_workers=[2, 6]"],
         ["stages[1].batch_size.video: 4 is smaller than 6 workers x grad_accum 1 (scaling.num_workers [2, 6]; "
          "batch_rounding down): every worker needs a row per micro-step; use a batch >= 6 or fewer workers"]),
    ],
)
def test_broken_spec_messages(overrides, expected):
    messages = "\n".join(errors_of(overrides=overrides))
    for fragment in expected:
        assert fragment in messages, messages


def test_batch_rounding_down_accepts_a_range_the_batch_does_not_divide():
    job = validate_spec(GOOD, ["batch_rounding=down", "scaling.num_workers=[1, 4]"])
    assert job.batch_rounding == "down" and job.scaling.worker_range == (1, 4)
    assert validate_spec(GOOD, ["scaling.num_workers=[1, 2]"]).batch_rounding == "exact"  # 8 and 4 split over 1, 2


def test_missing_required_field():
    raw = {k: v for k, v in GOOD.items() if k != "stages"}
    assert errors_of(raw) == ["stages: required field is missing"]


def test_missing_and_unknown_kind():
    assert errors_of({"name": "x"}) == ["kind: required field is missing"]
    (msg,) = errors_of({"kind": "trian"})
    assert msg.startswith("kind: must be one of") and "'trian'" in msg and "pretrain" in msg


def test_all_problems_reported_at_once():
    msgs = errors_of(overrides=["stages[0].steps=-1", "model.size=huge"])
    assert len(msgs) == 2


def test_duplicate_stage_names():
    msgs = errors_of(overrides=["stages[1].name=image"])
    assert msgs == ["stages[1].name: duplicate name 'image' (also at stages[0])"]


def test_error_names_the_file():
    with pytest.raises(SpecError) as info:
        validate_spec(GOOD, ["model.size=huge"], source="jobs/x.yaml")
    assert "jobs/x.yaml" in str(info.value)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("stages[7].steps=2", "--set stages[7].steps=2: index 7 out of range (stages has 2 item(s))"),
        ("stages.steps=2", "--set stages.steps=2: stages is not a mapping"),
        ("stages[0]..steps=2", "--set stages[0]..steps=2: empty segment"),
        ("stages[0].steps", "--set stages[0].steps: expected PATH=VALUE"),
        ("stages[0].name.x=1", "--set stages[0].name.x=1: stages[0].name is not a mapping"),
    ],
)
def test_bad_overrides(override, fragment):
    (msg,) = errors_of(overrides=[override])
    assert msg.startswith(fragment), msg


def test_override_goes_through_validation_and_applies():
    job = validate_spec(GOOD, ["stages[0].steps=25", "stages[0].optimizer.lr=1e-3"])
    assert job.stages[0].steps == 25 and job.stages[0].optimizer.lr == 1e-3
    assert GOOD["stages"][0]["steps"] == 10  # the raw spec is not modified


def test_pipeline_step_errors_are_prefixed():
    raw = {"kind": "pipeline", "steps": [
        {"name": "a", "job": {"kind": "synth", "corpus": {"seed": "x"}}},
        {"name": "b", "job": {**GOOD, "stages": [{**GOOD["stages"][0], "steps": 0}]}},
    ]}
    msgs = errors_of(raw)
    assert any(m.startswith("steps[0].job.corpus.seed:") for m in msgs), msgs
    assert "steps[1].job.stages[0].steps: must be > 0, got 0" in msgs


def test_pipeline_reference_to_unknown_or_later_step():
    raw = {"kind": "pipeline", "steps": [
        {"name": "a", "job": {"kind": "synth", "corpus": {}}},
        {"name": "b", "job": {**GOOD, "data": {"sources": [
            {"name": "imgs", "manifest": "${steps.c}/x.jsonl", "modality": "image"},
            {"name": "vids", "manifest": "${steps.a}/x.jsonl", "modality": "video"}]}}},
        {"name": "c", "job": {"kind": "synth"}},
    ]}
    (msg,) = errors_of(raw)
    assert msg.startswith("steps[1].job: references ${steps.c} but no earlier step is named 'c'")


def test_pipeline_rejects_nested_pipeline():
    raw = {"kind": "pipeline", "steps": [{"name": "a", "job": {"kind": "pipeline", "steps": []}}]}
    (msg,) = errors_of(raw)
    assert msg.startswith("steps[0].job.kind: must be one of") and "'pipeline'" in msg


def test_schema_covers_every_kind():
    from omnivl.spec import JOBS, schema

    doc = schema()
    assert set(doc) == set(JOBS.tags()) >= {"pretrain", "evaluate", "serve", "pipeline", "synth"}
    assert doc["pretrain"]["additionalProperties"] is False
