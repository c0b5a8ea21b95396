"""`omnivl submit/status/logs/stop` against a real Ray head started by this module on 127.0.0.1.

The head runs with token auth (see conftest.py). Every client call goes through our CLI (`omnivl.cli.main`)
or our client module; environment changes go through monkeypatch and are undone after each test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cli_helpers import cli, write_spec
from omnivl.cluster import jobs_client as jc
from rayhead import CLIENT_ENV_VARS, mentioning

pytestmark = pytest.mark.ray

JOB_TIMEOUT_S = 90


@pytest.fixture
def authed(ray_head, clean_client_env, monkeypatch):
    """The test cluster's address, with its token in RAY_AUTH_TOKEN (and nothing else in the env)."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    return ray_head.address


def synth_spec(output: Path) -> dict:
    return {"kind": "synth", "name": "tiny-synth", "output": str(output),
            "corpus": {"image_text": 2, "image_label": 2, "video_text": 2, "video_label": 2,
                       "image_size": 16, "video_frames": 2, "val_fraction": 0.0, "test_fraction": 0.0}}


def test_submit_synth_job_follow_status_logs(authed, capsys, tmp_path):
    out_dir = tmp_path / "corpus"
    spec = write_spec(tmp_path / "synth.yaml", synth_spec(out_dir))

    code, out, err = cli(capsys, "submit", str(spec), "--set", "corpus.image_text=3",
                         "--address", authed, "--follow", "--submission-id", "ovl-synth-ok")
    assert code == 0, err
    assert out.splitlines()[0] == "ovl-synth-ok"
    assert "running on Ray cluster at" in out  # the job attached to our cluster, not an embedded one
    assert "finished synth 'tiny-synth'" in out
    assert "SUCCEEDED" in err
    # The override travelled inside the shipped spec: 3 image-text pairs, not the file's 2.
    assert len(list((out_dir / "image_text" / "media").glob("*.jpg"))) == 3

    code, out, err = cli(capsys, "status", "ovl-synth-ok", "--address", authed)
    assert (code, out.strip()) == (0, "SUCCEEDED")
    assert "driver exit code 0" in err

    code, out, _ = cli(capsys, "logs", "ovl-synth-ok", "--address", authed)
    assert code == 0 and "finished synth 'tiny-synth'" in out


def test_job_runs_shipped_code_and_spec(authed, tmp_path):
    """The runtime_env carries the omnivl package (py_modules) and the resolved spec (working_dir)."""
    client = jc.JobsClient(authed, "token")
    probe = ("python -c \"import omnivl, pathlib; print('OMNIVL_AT', omnivl.__file__); "
             "print(pathlib.Path('spec.yaml').read_text())\"")
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "spec.yaml").write_text("kind: synth\n")
    job_id = client.submit_entrypoint(probe, runtime_env=jc.code_runtime_env(workdir))
    info = client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
    logs = client.logs(job_id)
    assert info.status == "SUCCEEDED", logs
    at = next(line for line in logs.splitlines() if line.startswith("OMNIVL_AT"))
    assert "runtime_resources/py_modules_files" in at, at
    assert "kind: synth" in logs


def test_failing_job_is_reported_failed(authed, capsys, tmp_path):
    spec = write_spec(tmp_path / "bad-output.yaml", synth_spec(Path("/proc/omnivl-unwritable/corpus")))

    code, out, err = cli(capsys, "submit", str(spec), "--address", authed)
    assert code == 1, err
    job_id = out.splitlines()[0]
    assert "FAILED" in err

    code, out, err = cli(capsys, "status", job_id, "--address", authed)
    assert (code, out.strip()) == (0, "FAILED")
    info = jc.JobsClient(authed, "token").info(job_id)
    assert info.driver_exit_code not in (None, 0)

    _, logs, _ = cli(capsys, "logs", job_id, "--address", authed)
    assert "/proc/omnivl-unwritable" in logs  # the job's own error names the path at fault


def test_stop_running_job(authed, capsys):
    client = jc.JobsClient(authed, "token")
    job_id = client.submit_entrypoint("python -c \"import time; print('sleeping', flush=True); time.sleep(300)\"")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while client.info(job_id).status != "RUNNING":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.5)

    code, _, err = cli(capsys, "stop", job_id, "--wait", "--address", authed)
    assert code == 0, err
    assert client.info(job_id).status == "STOPPED"
    code, _, err = cli(capsys, "stop", job_id, "--address", authed)
    assert code == 0 and "already finished (STOPPED)" in err


def test_unknown_job_id(authed, capsys):
    code, _, err = cli(capsys, "status", "no-such-job", "--address", authed)
    assert code == 3 and "no job 'no-such-job'" in err


def test_explicit_address_wins_over_environment(authed, capsys, monkeypatch):
    # Ray's own client would silently use these instead of the address we pass (notes §4).
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:1")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    code, _, err = cli(capsys, "status", "no-such-job", "--address", authed)
    assert code == 3 and f"at {authed}" in err

    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", authed)  # and without --address, the env is the default
    code, _, err = cli(capsys, "status", "no-such-job")
    assert code == 3 and f"at {authed}" in err


# --- token auth --------------------------------------------------------------------------------------------


def test_no_token_gives_clear_message(ray_head, tmp_path):
    """A fresh shell with no token anywhere (the common mistake) is told what to set. A subprocess, because
    the mistake is about a process whose Ray auth mode is unset, and this one's may already be `token`."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_VARS}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "omnivl", "status", "x", "--address", ray_head.address],
                          env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 3, proc.stderr
    assert "requires token authentication and no token was sent (auth mode 'auto')" in proc.stderr
    assert "RAY_AUTH_TOKEN" in proc.stderr and "--auth" in proc.stderr


def test_wrong_token_is_rejected_clearly(ray_head, clean_client_env, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    code, _, err = cli(capsys, "status", "x", "--address", ray_head.address, "--auth", "token")
    assert code == 3
    assert "rejected the token from RAY_AUTH_TOKEN" in err and "not-the-token" not in err


def test_token_from_file_and_home(ray_head, clean_client_env, capsys, monkeypatch):
    token_file = clean_client_env / "token"
    token_file.write_text(ray_head.token + "\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    code, _, err = cli(capsys, "status", "no-such-job", "--address", ray_head.address)
    assert code == 3 and "no job" in err  # authenticated: the cluster answered about the job

    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    home_token = clean_client_env / "home" / ".ray" / "auth_token"
    home_token.parent.mkdir(parents=True)
    home_token.write_text(ray_head.token)
    code, _, err = cli(capsys, "status", "no-such-job", "--address", ray_head.address, "--auth", "token")
    assert code == 3 and "no job" in err


# --- must stay last: it stops the module's cluster -------------------------------------------------------


def test_zz_shutdown_stops_exactly_our_cluster(ray_head):
    """SIGTERM to our `ray start --block` stops every process of our cluster. Every process that names our
    temp dir is in the tree we stop, and shutdown signals no pid outside that tree."""
    ours = ray_head.snapshot_tree()
    assert len(ours) > 5  # gcs, raylet, dashboard and its modules, agents, workers ...
    assert mentioning(str(ray_head.temp_dir)) <= ours
    # Ray recorded our cluster under our own temp dir, so a later bare `ray.init()` elsewhere cannot find it.
    assert str(ray_head.gcs_port) in (ray_head.temp_dir / "ray_current_cluster").read_text()
    shared = Path("/tmp/ray/ray_current_cluster")
    assert not shared.exists() or f":{ray_head.gcs_port}" not in shared.read_text()
    assert not ray_head.shutdown()
    assert not mentioning(str(ray_head.temp_dir))
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{ray_head.address}/api/version", timeout=2)
