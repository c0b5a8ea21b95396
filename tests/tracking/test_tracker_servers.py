"""`omnivl.tracking` without Ray, against a real MLflow server, TensorBoard's reader and W&B offline runs: the
driver/worker sequence of a two-stage training run, a resumed run, then an evaluation into the same run."""

import json

import pytest
from PIL import Image

from omnivl.tracking.config import TrackingConfig
from omnivl.tracking.record import load_record
from omnivl.tracking.session import TrainingTracking, log_evaluation, training_run_of
from tracker_readers import mlflow_artifacts, mlflow_history, tensorboard_scalars, wandb_offline_run

SPEC = {"kind": "pretrain", "name": "units", "stages": [{"name": "a", "steps": 3}, {"name": "b", "steps": 2}],
        "optimizer": {"lr": 3e-4}}


def step(stage, index, s, loss):
    return {"stage": stage, "stage_index": index, "step": s, "total_steps": 3, "modality": "image", "lr": 1e-3,
            "loss": loss, "time": 1.7e9 + s}


@pytest.fixture(scope="module")
def tracked(mlflow_server, tmp_path_factory):
    """A run directory after: start, stage a (3 steps), stage b (2 steps) started but cut short, a re-run that
    resumes b, the export, and an evaluation of that export."""
    run = tmp_path_factory.mktemp("units") / "run"
    cfg = TrackingConfig.model_validate({"mlflow": {"tracking_uri": mlflow_server, "experiment": "units"},
                                         "wandb": {"mode": "offline", "project": "units"}})
    tracking = TrainingTracking(cfg, str(run), name="units", kind="pretrain", params=SPEC)
    tracking.start()
    sink = tracking.stage_sink(0)
    for s in (1, 2, 3):
        sink.log(step("a", 0, s, 3.0 - s / 10))
    sink.close()
    png = run / "plots" / "a.png"
    png.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(png)
    tracking.stage_done("a", 0, {"status": "ran", "steps": 3, "curves": str(png)})
    first_ids = json.loads((run / "tracking.json").read_text())
    sink = tracking.stage_sink(3)
    sink.log(step("b", 1, 1, 2.0))
    sink.close()  # the job was interrupted here

    resumed = TrainingTracking(cfg, str(run), name="units", kind="pretrain",
                               params={**SPEC, "optimizer": {"lr": 1e-4}})  # a changed value on the re-run
    resumed.start()
    sink = resumed.stage_sink(3)
    for s in (1, 2):
        sink.log(step("b", 1, s, 2.0 - s / 10))
    sink.close()
    resumed.stage_done("b", 3, {"status": "ran", "steps": 2, "curves": None})
    (run / "export").mkdir()
    resumed.finish(str(run / "export"))

    out = run.parent / "eval"
    out.mkdir()
    (out / "report.md").write_text("# report\n")
    (out / "metrics.json").write_text("{}")
    logged_to = log_evaluation(cfg, export=str(run / "export"), out_uri=str(out), name="units-eval", params={},
                               summary={"imgs": {"text->image R@1": {"value": 40.0, "chance": 10.0}}})
    return {"run": run, "first_ids": first_ids, "logged_to": logged_to, "uri": mlflow_server}


def test_a_resumed_run_continues_the_same_tracker_runs(tracked):
    record = load_record(str(tracked["run"]))
    assert record["mlflow"]["run_id"] == tracked["first_ids"]["mlflow"]["run_id"]
    assert record["wandb"]["id"] == tracked["first_ids"]["wandb"]["id"]
    assert record["mlflow"]["tracking_uri"] == tracked["uri"]
    assert record["stages"] == {"a": {"first_step": 1, "last_step": 3}, "b": {"first_step": 4, "last_step": 5}}
    assert record["global_step"] == 5
    assert training_run_of(str(tracked["run"] / "export")) == str(tracked["run"])
    assert tracked["logged_to"] == str(tracked["run"])


def test_mlflow_run_has_params_global_steps_artifacts_and_evaluation(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracked["uri"])
    run = client.get_run(load_record(str(tracked["run"]))["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["stages.1.name"] == "b"
    assert run.data.params["optimizer.lr"] == "0.0003"  # MLflow keeps the first value ...
    assert run.data.tags["omnivl.params_changed"] == "optimizer.lr"  # ... and the re-run says what changed
    assert run.data.tags["omnivl.export"] == str(tracked["run"] / "export")
    assert run.data.tags["omnivl.stage.b.steps"] == "4-5"
    assert mlflow_history(client, run.info.run_id, "a/loss") == [(1, 2.9), (2, 2.8), (3, 2.7)]
    # stage b's step 1 was logged by the interrupted job and again by the re-run (global step 4)
    assert [s for s, _ in mlflow_history(client, run.info.run_id, "b/loss")] == [4, 4, 5]
    assert mlflow_history(client, run.info.run_id, "eval/imgs/text_to_image_R_at_1") == [(5, 40.0)]
    assert mlflow_history(client, run.info.run_id, "eval/imgs/text_to_image_R_at_1_chance") == [(5, 10.0)]
    artifacts = mlflow_artifacts(client, run.info.run_id)
    assert "curves/a.png" in artifacts
    assert {"evaluation/units-eval/report.md", "evaluation/units-eval/metrics.json"} <= set(artifacts)


def test_tensorboard_events_hold_every_step_on_the_global_axis(tracked):
    scalars = tensorboard_scalars(tracked["run"] / "tensorboard")
    assert [s for s, _ in scalars["a/loss"]] == [1, 2, 3]
    assert [s for s, _ in scalars["b/loss"]] == [4, 4, 5]
    assert scalars["eval/imgs/text_to_image_R_at_1"] == [(5, 40.0)]


def test_wandb_offline_run_has_config_history_files_and_summary(tracked):
    record = load_record(str(tracked["run"]))
    run = wandb_offline_run(tracked["run"] / "wandb", record["wandb"]["id"])
    steps = [(row["_step"], row["a/loss"]) for row in run["history"] if "a/loss" in row]
    assert [s for s, _ in steps] == [1, 2, 3]
    assert sorted(row["_step"] for row in run["history"] if "b/loss" in row) == [4, 4, 5]
    assert run["config"]["stages"][1]["name"] == "b"
    assert run["config"]["optimizer"]["lr"] == 1e-4  # W&B's config takes the re-run's value
    assert "curves/a.png" in run["files"] and "evaluation/units-eval/report.md" in run["files"]
    assert run["summary"]["eval/imgs/text_to_image_R_at_1"] == 40.0
    assert run["summary"]["omnivl.export"] == str(tracked["run"] / "export")
