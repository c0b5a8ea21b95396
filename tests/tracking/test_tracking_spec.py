"""The `tracking:` spec section, the tracker's naming rules (params, metric keys, global steps) and
`omnivl submit --env-var`, without Ray or a tracker."""

import textwrap

import pytest

from omnivl.spec import SpecError, validate_spec
from omnivl.spec.loader import parse_yaml
from omnivl.tracking.config import MlflowConfig, WandbConfig
from omnivl.tracking.names import eval_metrics, flatten_params, global_step, metric_key, step_metrics
from omnivl.tracking.record import without_credentials

PRETRAIN = parse_yaml(textwrap.dedent("""
    kind: pretrain
    name: t
    data:
      sources:
        - {name: imgs, manifest: m.jsonl, modality: image, kind: text}
    stages:
      - {name: image, sources: [imgs], steps: 10, batch_size: {image: 8}}
"""))
EVALUATE = parse_yaml(textwrap.dedent("""
    kind: evaluate
    name: e
    checkpoint: runs/t/export
    data:
      sources:
        - {name: imgs, manifest: m.jsonl, modality: image, kind: text}
"""))


def errors_of(raw, overrides):
    with pytest.raises(SpecError) as info:
        validate_spec(raw, overrides, source="t.yaml")
    return [str(i) for i in info.value.issues]


def test_tensorboard_is_on_and_the_others_off_by_default():
    for raw in (PRETRAIN, EVALUATE):
        t = validate_spec(raw).tracking
        assert t.tensorboard and t.mlflow is None and t.wandb is None and t.enabled
    t = validate_spec(PRETRAIN, ["tracking={tensorboard: false, mlflow: {}, wandb: {mode: offline}}"]).tracking
    assert not t.tensorboard and t.mlflow.tracking_uri is None and t.wandb.mode == "offline"
    assert not validate_spec(PRETRAIN, ["tracking.tensorboard=false"]).tracking.enabled


def test_finetune_specs_have_the_section_too():
    from omnivl.spec.jobs import FinetuneJob

    assert "tracking" in FinetuneJob.model_fields


@pytest.mark.parametrize("raw", [PRETRAIN, EVALUATE], ids=["pretrain", "evaluate"])
@pytest.mark.parametrize("override, expected", [
    ("tracking.mlflow={tracking_uri: 'ftp://host/x'}", "tracking.mlflow.tracking_uri: 'ftp://host/x' is not an MLflow"),
    ("tracking.mlflow={tracking_uri: 'http://me:secret@host:5000'}",
     "tracking.mlflow.tracking_uri: carries a password; put credentials in MLFLOW_TRACKING_USERNAME"),
    ("tracking.mlflow={experiment: ''}", "tracking.mlflow.experiment:"),
    ("tracking.wandb={mode: sometimes}", "tracking.wandb.mode: must be one of 'online' or 'offline'"),
    ("tracking.wandb={api_key: abc}", "tracking.wandb.api_key: unknown key"),
    ("tracking.wandb={project: 'a/b'}", "tracking.wandb.project:"),
    ("tracking.tensorbord=false", "tracking.tensorbord: unknown key; did you mean 'tensorboard'?"),
])
def test_bad_tracking_values_name_the_field(raw, override, expected):
    errors = errors_of(raw, [override])
    assert any(e.startswith(expected) for e in errors), errors


def test_mlflow_uri_and_wandb_settings_fall_back_to_env_vars():
    assert MlflowConfig().resolved_uri({"MLFLOW_TRACKING_URI": "http://h:5000"}) == "http://h:5000"
    assert MlflowConfig(tracking_uri="file:/tmp/m").resolved_uri({"MLFLOW_TRACKING_URI": "http://h"}) == "file:/tmp/m"
    assert MlflowConfig().resolved_uri({}) is None
    env = {"WANDB_PROJECT": "p", "WANDB_ENTITY": "team", "WANDB_MODE": "offline"}
    assert WandbConfig().resolved("job", env) == {"project": "p", "entity": "team", "mode": "offline"}
    assert WandbConfig(project="q", mode="online").resolved("job", env) == {"project": "q", "entity": "team",
                                                                           "mode": "online"}
    assert WandbConfig().resolved("job", {}) == {"project": "job", "entity": None, "mode": "online"}


def test_the_resolved_spec_flattens_to_dotted_params():
    job = validate_spec(PRETRAIN)
    params = flatten_params(job.to_dict())
    assert params["kind"] == "pretrain"
    assert params["stages.0.name"] == "image"
    assert params["stages.0.batch_size.image"] == "8"
    assert params["stages.0.sources"] == '["imgs"]'
    assert params["data.sources.0.manifest"] == "m.jsonl"
    assert params["tracking.tensorboard"] == "true" and params["tracking.mlflow"] == "null"
    assert all("[" not in k for k in params)  # MLflow param keys allow no brackets
    assert flatten_params({"a": {}, "b": "x" * 7000})["a"] == "{}"
    assert len(flatten_params({"b": "x" * 7000})["b"]) == 6000


def test_steps_are_global_across_stages_and_keys_carry_the_stage():
    assert global_step(0, 1) == 1 and global_step(400, 1) == 401
    record = {"stage": "joint", "stage_index": 1, "step": 7, "total_steps": 10, "modality": "video", "lr": 1e-4,
              "loss": 2.5, "loss_vlc": 1.0, "samples_per_s": 12.0, "time": 1.7e9, "flag": True}
    assert step_metrics(record) == {"joint/lr": 1e-4, "joint/loss": 2.5, "joint/loss_vlc": 1.0,
                                    "joint/samples_per_s": 12.0}
    assert metric_key("eval", "video_text", "text->video R@1") == "eval/video_text/text_to_video_R_at_1"
    assert metric_key("eval", "x", "QA exact match (%)") == "eval/x/QA_exact_match_pct"
    m = eval_metrics({"imgs": {"text->image R@1": {"value": 12.5, "chance": 4.0}}})
    assert m == {"eval/imgs/text_to_image_R_at_1": 12.5, "eval/imgs/text_to_image_R_at_1_chance": 4.0}


def test_recorded_uris_lose_their_credentials():
    assert without_credentials("http://u:p@host:5000/x") == "http://host:5000/x"
    assert without_credentials("http://host:5000") == "http://host:5000"
    assert without_credentials("file:/tmp/m") == "file:/tmp/m"


def test_submit_env_vars_come_from_the_shell_into_the_runtime_env(tmp_path):
    from omnivl.cluster.jobs_client import code_runtime_env, env_from_shell

    shell = {"MLFLOW_TRACKING_URI": "http://h:5000", "WANDB_API_KEY": "k"}
    assert env_from_shell(["MLFLOW_TRACKING_URI", "WANDB_API_KEY"], shell) == shell
    with pytest.raises(ValueError, match="WANDB_MODE: not set in this shell"):
        env_from_shell(["WANDB_MODE"], shell)
    with pytest.raises(ValueError, match="not an environment variable name"):
        env_from_shell(["WANDB_API_KEY=k"], shell)
    env = code_runtime_env(tmp_path, shell)
    assert env["env_vars"] == shell and env["working_dir"] == str(tmp_path)
    assert "env_vars" not in code_runtime_env(tmp_path)


def test_submit_refuses_an_unset_env_var_before_contacting_a_cluster(tmp_path, capsys, monkeypatch):
    import yaml

    from omnivl.cli import main

    spec = tmp_path / "t.yaml"
    spec.write_text(yaml.safe_dump(PRETRAIN))
    monkeypatch.delenv("OMNIVL_TEST_UNSET_VAR", raising=False)
    # an address nothing listens on: exit 2 proves nothing was contacted (unreachable would be exit 3)
    code = main(["submit", str(spec), "--env-var", "OMNIVL_TEST_UNSET_VAR", "--address", "http://127.0.0.1:9"])
    assert code == 2
    assert "--env-var OMNIVL_TEST_UNSET_VAR: not set in this shell" in capsys.readouterr().err
