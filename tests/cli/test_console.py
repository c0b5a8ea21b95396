"""The console of `omnivl run` without a TTY (CI, `ray job logs`): the demo pipeline's own steps and stage names,
shrunk to seconds, run through the real CLI on an embedded Ray.

- no line appears twice and no Ray-internal line reaches the console (they go to the run's log file), while
  `--verbose` does show them (so the filter is what hides them);
- every training stage reports progress (step/total, loss, samples/s, ETA) and its end;
- the run ends with a short summary that names the evaluation report, headline metrics with chance levels and
  the full JSON summary file;
- the README's example of a pretraining run directory matches the directory this run wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]

# Lines that come from Ray or its libraries, never from omnivl's console.
RAY_INTERNAL = re.compile(
    r"\((RayTrainWorker|TrainController|MapWorker|_MapWorker|pid=)|Starting execution of Dataset|"
    r"Execution finished|core_worker\.cc|raylet|Ray Train Controller|INFO worker\.py|INFO streaming_executor|"
    r"DeprecationWarning|Started a local Ray instance|\[Ray|ray\.train|ray\.data")
STEPS_PER_STAGE = 4
DEMO_ROOT = "runs/demo"


def cli_env() -> dict[str, str]:
    env = {**os.environ, "OMNIVL_NUM_CPUS": "4", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


def omnivl(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """The real CLI, without a TTY, on a fresh embedded Ray of 4 logical CPUs (2 train workers + decoding), in
    `cwd` (where the demo's relative `runs/demo` lands, as it does in a checkout)."""
    return subprocess.run([sys.executable, "-m", "omnivl", *args], cwd=cwd, env=cli_env(), text=True,
                          capture_output=True, timeout=timeout)


def tiny_demo(tmp_path: Path) -> Path:
    """jobs/demo.yaml with the same steps and stage names, a tiny corpus and a few steps per stage."""
    spec = yaml.safe_load((ROOT / "jobs" / "demo.yaml").read_text())
    assert spec["output_root"] == DEMO_ROOT  # relative, as in a checkout: the test runs in tmp_path
    steps = {s["name"]: s["job"] for s in spec["steps"]}
    steps["corpus"]["corpus"].update(image_text=40, image_label=40, video_text=24, video_label=24, image_qa=24,
                                     video_qa=16, video_frames=4)
    for name in ("pretrain", "finetune"):
        job = steps[name]
        job["checkpoint"]["every_steps"] = STEPS_PER_STAGE
        for stage in job["stages"]:
            stage["steps"] = STEPS_PER_STAGE
            stage["batch_size"] = {m: 4 for m in stage["batch_size"]}
            stage["optimizer"]["warmup_steps"] = 1
    steps["evaluate"]["eval"]["rerank_k"] = 4
    path = tmp_path / "demo_tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    spec = tiny_demo(tmp)
    result = omnivl("run", str(spec), cwd=tmp, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return tmp, spec, result


def test_console_is_clean_and_ends_with_a_summary(demo_run):
    tmp, _, result = demo_run
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    print(f"console ({len(lines)} lines):\n" + "\n".join(lines))
    repeated = {line: n for line, n in Counter(lines).items() if n > 1}
    assert not repeated, repeated
    internal = [line for line in lines if RAY_INTERNAL.search(line)]
    assert not internal, internal
    assert not result.stderr.strip(), result.stderr[-3000:]

    log_line = next(line for line in lines if line.startswith("Ray and worker logs: "))
    log_file = Path(log_line.split(": ", 1)[1].split(" (--verbose")[0])
    assert log_file.is_file() and RAY_INTERNAL.search(log_file.read_text()), log_file  # hidden, not lost

    pretrain = yaml.safe_load((ROOT / "jobs" / "demo.yaml").read_text())["steps"][1]["job"]
    for stage in pretrain["stages"]:
        name = stage["name"]
        assert any(line.startswith(f"[{name} {STEPS_PER_STAGE}/{STEPS_PER_STAGE}") and "loss " in line
                   and "samples/s" in line and "ETA" in line for line in lines), name
        assert any(line.startswith(f"stage {name!r}: finished in") for line in lines), name

    summary_at = next(i for i, line in enumerate(lines) if line.startswith("finished pipeline 'demo'"))
    tail = lines[summary_at:]
    assert len(tail) < 60, tail  # short: the full JSON is in a file
    assert any(line.strip().startswith("report: ") and line.strip().endswith("report.md") for line in tail), tail
    assert any(re.search(r"text->video R@1: [\d.]+ \(chance [\d.]+\)", line) for line in tail), tail
    full = Path(tail[-1].split("full summary: ", 1)[1])
    assert json.loads(full.read_text())["evaluate"]["status"] == "ran"


def test_verbose_shows_ray_lines(demo_run):
    """The same (already finished) pipeline with --verbose: every step is skipped, and Ray's lines are live."""
    tmp, spec, _ = demo_run
    result = omnivl("run", str(spec), "--verbose", cwd=tmp, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert RAY_INTERNAL.search(result.stdout + result.stderr), (result.stdout + result.stderr)[-3000:]
    assert "Ray and worker logs:" not in result.stdout


def readme_run_dir_example() -> list[str]:
    """The paths of the README's 'What a pretraining run directory holds' block ("a, b" lines give two)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("What a pretraining run directory holds:", 1)[1].split("```", 2)[1]
    paths = []
    for line in block.strip().splitlines():
        names = re.split(r"\s{2,}", line.strip())[0]
        paths += [p.strip() for p in names.split(",")]
    return paths


def as_pattern(path: str) -> re.Pattern:
    """`checkpoints/00-video_label/step-00000100/` matches any step; `checkpoints/04-joint/...` any content."""
    path = path.rstrip("/")
    tail = ""
    if path.endswith("..."):
        path, tail = path[:-3].rstrip("/"), "/.+"
    return re.compile(re.escape(path).replace(r"step\-", "step-").replace("step-00000100", r"step-\d{8}") + tail)


def test_readme_run_directory_example_matches_a_real_run(demo_run):
    tmp, _, _ = demo_run
    run = next((tmp / DEMO_ROOT).glob("pretrain-*"))
    written = [str(p.relative_to(run)) for p in run.rglob("*")]
    example = readme_run_dir_example()
    for path in example:
        pattern = as_pattern(path)
        assert any(pattern.fullmatch(w) for w in written), f"README names {path!r}; the run wrote {sorted(written)}"
    named_top = {path.rstrip("/").split("/")[0] for path in example}
    written_top = {p.name for p in run.iterdir()}
    assert written_top <= named_top, f"the run wrote {sorted(written_top - named_top)}, which the README omits"


README_SERVE = re.compile(r"^(?:\.venv/bin/)?omnivl serve (jobs/serve_demo\.yaml)\s+# after `make demo`", re.M)
SERVE_READY_S = 180


@contextlib.contextmanager
def serving(args: list[str], cwd: Path, port: int) -> Iterator[str]:
    """`python -m omnivl ARGS` in `cwd`, which serves on 127.0.0.1:`port`: yields its URL once /readyz is 200,
    then stops it with SIGTERM (as a container stop does) and checks that it exited cleanly."""
    import signal
    import time

    import requests

    server = subprocess.Popen([sys.executable, "-m", "omnivl", *args], cwd=cwd, env=cli_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_READY_S
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            assert time.monotonic() < deadline, f"{url}/readyz not 200 after {SERVE_READY_S}s"
            try:
                if requests.get(f"{url}/readyz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)  # `omnivl serve` and a pipeline's serve step stop on SIGTERM
        output = server.communicate(timeout=120)[0]
    assert server.returncode == 0, output[-3000:]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_serve_command_serves_what_the_demo_trained(demo_run):
    """Right after the demo: the README's serving command, as written (plus a free port), finds the newest
    exports through `runs/demo/latest/` and answers the README's search request."""
    import requests

    tmp, _, _ = demo_run
    match = README_SERVE.search((ROOT / "README.md").read_text())
    assert match, "the README's serving section no longer shows `omnivl serve jobs/serve_demo.yaml`"
    port = free_port()
    with serving(["serve", str(ROOT / match.group(1)), "--set", f"port={port}"], tmp, port) as url:
        answer = requests.post(f"{url}/v1/search", json={"text": "a red circle", "top_k": 3}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["hits"]) == 3, answer.json()
        qa = requests.post(f"{url}/v1/embed", json={"texts": ["a red circle"], "model": "tiny-qa"}, timeout=120)
        assert qa.status_code == 200 and qa.json()["model"] == "tiny-qa", qa.text


README_SEARCH = re.compile(r"^omnivl run (jobs/search_demo\.yaml)\s+# after `make demo`", re.M)


def test_the_search_demo_embeds_indexes_and_serves_the_demo_corpus(demo_run):
    """The README's search pipeline right after the demo: embed the demo corpus with its export, build the index,
    and serve /v1/search from it (the serve step, last, runs until SIGTERM)."""
    import requests

    tmp, _, _ = demo_run
    match = README_SEARCH.search((ROOT / "README.md").read_text())
    assert match, "the README no longer shows `omnivl run jobs/search_demo.yaml`"
    spec = yaml.safe_load((ROOT / match.group(1)).read_text())
    serve_at = next(i for i, step in enumerate(spec["steps"]) if step["job"]["kind"] == "serve")
    port = free_port()
    with serving(["run", str(ROOT / match.group(1)), "--set", f"steps[{serve_at}].job.port={port}"], tmp, port) as url:
        info = requests.get(f"{url}/v1/model", timeout=30).json()
        index = Path(info["gallery"]["index"])
        assert index.parent == (tmp / spec["output_root"]).resolve() and index.name.startswith("index-"), index
        corpus = json.loads((index / "index.json").read_text())
        assert corpus["type"] == "flat" and corpus["rows"] > 0
        answer = requests.post(f"{url}/v1/search", json={"text": "a red circle moving left", "top_k": 5}, timeout=120)
        assert answer.status_code == 200, answer.text
        hits = answer.json()["hits"]
        assert len(hits) == 5 and all(Path(h["uri"]).is_relative_to(tmp / DEMO_ROOT) for h in hits), hits
        assert {h["modality"] for h in hits} <= {"image", "video"}
