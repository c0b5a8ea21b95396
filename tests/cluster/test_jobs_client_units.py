"""The Jobs client's logic that needs no cluster: address and token resolution, what is shipped, and the
CLI's refusals before contacting anything (invalid spec, `--auth token` without a token, closed port)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import cli, write_spec
from omnivl.cluster import jobs_client as jc
from rayhead import free_port


def synth_spec(output: Path) -> dict:
    return {"kind": "synth", "name": "tiny-synth", "output": str(output), "corpus": {"image_text": 2}}


def _closed_port() -> int:
    return free_port()  # bound then released: nothing listens there



def test_invalid_spec_is_rejected_before_contacting_the_cluster(clean_client_env, capsys, tmp_path):
    spec = synth_spec(tmp_path / "out")
    spec["corpus"]["imagetext"] = 3
    path = write_spec(tmp_path / "typo.yaml", spec)
    closed = f"http://127.0.0.1:{_closed_port()}"  # contacting it would be exit 3, not 2

    code, out, err = cli(capsys, "submit", str(path), "--address", closed)
    assert code == 2 and out == ""
    assert "corpus.imagetext" in err

    code, _, err = cli(capsys, "submit", str(write_spec(tmp_path / "ok.yaml", synth_spec(tmp_path / "o"))),
                       "--set", "corpus.image_text=-1", "--address", closed)
    assert code == 2 and "corpus.image_text" in err


def test_unreachable_address_names_it(clean_client_env, capsys):
    closed = f"http://127.0.0.1:{_closed_port()}"
    code, _, err = cli(capsys, "status", "x", "--address", closed)
    assert code == 3 and f"cannot reach the Ray Jobs API at {closed}" in err


def test_token_mode_without_any_token(clean_client_env, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # --auth defaults to RAY_AUTH_MODE
    code, _, err = cli(capsys, "status", "x", "--address", f"http://127.0.0.1:{_closed_port()}")
    assert code == 3 and "no token found" in err and "RAY_AUTH_TOKEN_PATH" in err


def test_token_lookup_order(tmp_path):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home")
    (tmp_path / "t").write_text("from-path\n")
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "t"), "HOME": str(tmp_path)}
    assert jc.find_token(env).value == "from-env"
    assert jc.find_token({**env, "RAY_AUTH_TOKEN": ""}).value == "from-path"
    assert jc.find_token({"HOME": str(tmp_path)}).value == "from-home"
    assert jc.find_token({"HOME": str(tmp_path / "nohome")}) is None
    assert jc.select_token("disabled", env) is None
    with pytest.raises(jc.JobsAuthError, match="RAY_AUTH_TOKEN_PATH=.*missing"):
        jc.find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    with pytest.raises(jc.JobsAuthError, match="auth mode must be one of"):
        jc.select_token("tokne", env)
    assert jc.auth_headers(jc.Token("abc", "x")) == {"Authorization": "Bearer abc"}


def test_address_resolution():
    assert jc.resolve_address("http://h:8265/", {"RAY_ADDRESS": "http://e:1"}) == "http://h:8265"
    assert jc.resolve_address(None, {"RAY_API_SERVER_ADDRESS": "a:8265", "RAY_ADDRESS": "b:1"}) == "http://a:8265"
    assert jc.resolve_address(None, {"RAY_ADDRESS": "https://b:443"}) == "https://b:443"
    with pytest.raises(jc.JobsError, match="no cluster address"):
        jc.resolve_address(None, {})
    with pytest.raises(jc.JobsError, match="RAY_ADDRESS='ray://h:10001' is not a Jobs API address"):
        jc.resolve_address(None, {"RAY_ADDRESS": "ray://h:10001"})


def test_resolved_spec_and_runtime_env(tmp_path):
    path = write_spec(tmp_path / "s.yaml", synth_spec(tmp_path / "o"))
    resolved = jc.resolved_spec(path, ["corpus.image_text=7", "name=renamed"])
    assert resolved["corpus"]["image_text"] == 7 and resolved["name"] == "renamed"
    env = jc.code_runtime_env(tmp_path)
    (module,) = env["py_modules"]
    assert Path(module).name == "omnivl" and (Path(module) / "__init__.py").is_file()
    assert env["working_dir"] == str(tmp_path) and "__pycache__" in env["excludes"]


def test_relative_outputs_are_flagged(tmp_path):
    from omnivl.spec import load_spec

    path = write_spec(tmp_path / "s.yaml", synth_spec(Path("runs/corpus")))
    assert jc.relative_outputs(load_spec(path)) == ["output=runs/corpus"]
    assert jc.relative_outputs(load_spec(path, ["output=s3://b/corpus"])) == []
    assert jc.relative_outputs(load_spec(path, [f"output={tmp_path}/c"])) == []
