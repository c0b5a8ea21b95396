"""A short pretraining job on an embedded Ray cluster with all three trackers on (a real MLflow server, TensorBoard,
W&B offline), extended by a second stage in a re-run, then evaluated: everything is read back with each tracker's
own reader. One job sequence for the module; the tests read its results."""

import json
import os

import pytest

from omnivl.cluster.evaluate import run_job as evaluate
from omnivl.cluster.pretrain import run_job as pretrain
from omnivl.spec import validate_spec
from omnivl.train.metrics import read_records
from tracker_readers import mlflow_artifacts, mlflow_history, tensorboard_scalars, wandb_offline_run
from train.test_pretrain_ray import spec as pretrain_spec  # tests/train's small pretraining spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS_A, STEPS_B = 6, 4


@pytest.fixture(scope="module")
def ray_module(s3_server):
    """The session's embedded Ray (tests/conftest.py's `ray_local`, which is function-scoped)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 object_store_memory=1_500_000_000)
    return ray


@pytest.fixture(scope="module")
def runs(ray_module, mlflow_server, tmp_path_factory):
    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import generate

    corpus = tmp_path_factory.mktemp("trackcorpus")
    generate(SynthConfig(seed=5, image_text=64, image_label=0, video_text=4, video_label=0, image_qa=0, video_qa=0,
                         video_frames=4), str(corpus))
    run = tmp_path_factory.mktemp("tracked") / "run"
    raw = pretrain_spec(corpus, run, steps=STEPS_A, every=3).to_dict()
    raw["tracking"] = {"mlflow": {"experiment": "omnivl-tests"}, "wandb": {"mode": "offline", "project": "t"}}
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server  # `mlflow: {}` without a URI reads it from here
    try:
        first = pretrain(validate_spec(raw))
        ids = json.loads((run / "tracking.json").read_text())
        # the same run extended by a stage: the first is skipped, the second continues the tracker runs
        raw["stages"].append({**raw["stages"][0], "name": "more", "steps": STEPS_B})
        second = pretrain(validate_spec(raw))
        ev = validate_spec({
            "kind": "evaluate", "name": "eval-t", "output": str(run.parent / "eval"), "checkpoint": str(run),
            "model": raw["model"], "data": {"decode": raw["data"]["decode"], "sources": [
                {**raw["data"]["sources"][0], "manifest": str(corpus / "image_text" / "test.jsonl")}]},
            "eval": {"tasks": ["retrieval"], "rerank_k": 0}, "tracking": raw["tracking"]})
        evaluated = evaluate(ev)
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return {"run": run, "first": first, "second": second, "ids": ids, "eval": evaluated, "uri": mlflow_server}


def losses(run, stage):
    return [(r["step"], r["loss"]) for r in read_records(run / "metrics.jsonl")
            if r.get("stage") == stage and "loss" in r]


def test_the_job_ran_and_the_rerun_continued_it(runs):
    assert runs["first"]["stages"]["image"]["status"] == "ran"
    assert runs["second"]["stages"]["image"]["status"] == "skipped"
    assert runs["second"]["stages"]["more"]["status"] == "ran"
    record = json.loads((runs["run"] / "tracking.json").read_text())
    assert record["mlflow"]["run_id"] == runs["ids"]["mlflow"]["run_id"]
    assert record["wandb"]["id"] == runs["ids"]["wandb"]["id"]
    assert record["stages"]["more"] == {"first_step": STEPS_A + 1, "last_step": STEPS_A + STEPS_B}


def test_mlflow_server_has_params_step_metrics_curves_and_evaluation(runs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(runs["uri"])
    run_id = runs["ids"]["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "omnivl-tests"
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["kind"] == "pretrain" and params["stages.0.name"] == "image"
    assert params["stages.0.steps"] == str(STEPS_A) and params["model.size"] == "tiny"
    assert params["data.decode.image_size"] == "64"
    # per-step metrics on one global axis: the second stage's steps follow the first's
    image = mlflow_history(client, run_id, "image/loss")
    assert [s for s, _ in image] == list(range(1, STEPS_A + 1))
    assert [v for _, v in image] == pytest.approx([v for _, v in losses(runs["run"], "image")])
    more = mlflow_history(client, run_id, "more/loss")
    assert [s for s, _ in more] == list(range(STEPS_A + 1, STEPS_A + STEPS_B + 1))
    assert [s for s, _ in mlflow_history(client, run_id, "image/lr")] == list(range(1, STEPS_A + 1))
    assert run.data.tags["omnivl.export"] == runs["second"]["export"]
    artifacts = mlflow_artifacts(client, run_id)
    assert {"curves/image.png", "curves/more.png"} <= set(artifacts), artifacts
    # the evaluate job of this run's export logged into the same run, at its last global step
    r1 = mlflow_history(client, run_id, "eval/image_text/text_to_image_R_at_1")
    want = runs["eval"]["metrics"]["image_text"]["text->image R@1"]
    assert r1 == [(STEPS_A + STEPS_B, pytest.approx(want["value"]))]
    assert "evaluation/eval-t/report.md" in artifacts


def test_tensorboard_event_files_read_back_with_tensorboards_reader(runs):
    scalars = tensorboard_scalars(runs["run"] / "tensorboard")
    assert scalars["image/loss"] == [(s, pytest.approx(v)) for s, v in losses(runs["run"], "image")]
    assert [s for s, _ in scalars["more/loss"]] == list(range(STEPS_A + 1, STEPS_A + STEPS_B + 1))
    assert [v for _, v in scalars["more/loss"]] == pytest.approx([v for _, v in losses(runs["run"], "more")])
    assert [s for s, _ in scalars["eval/image_text/text_to_image_R_at_1"]] == [STEPS_A + STEPS_B]


def test_wandb_offline_run_holds_the_history_of_both_stages(runs):
    run = wandb_offline_run(runs["run"] / "wandb", runs["ids"]["wandb"]["id"])
    steps = sorted(row["_step"] for row in run["history"] if "image/loss" in row or "more/loss" in row)
    assert steps == list(range(1, STEPS_A + STEPS_B + 1))
    assert run["config"]["stages"][1]["name"] == "more"
    assert {"curves/image.png", "curves/more.png"} <= set(run["files"])
    assert "eval/image_text/text_to_image_R_at_1" in run["summary"]
