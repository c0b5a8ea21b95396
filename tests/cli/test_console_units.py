"""omnivl.console without Ray: plain-line cadence, warnings once, a restarted worker group, the live bars, the
end-of-run summary, and the file-descriptor redirect that keeps Ray's output off the console."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from omnivl import console
from omnivl.console import Console, format_seconds, summary_lines


def record(step: int, t: float, total: int = 100, stage: str = "joint") -> dict:
    return {"stage": stage, "step": step, "total_steps": total, "modality": "video", "loss": 2.5 - step / 100,
            "samples_per_s": 40.0, "data_wait_frac": 0.1, "time": t}


def test_plain_lines_come_at_a_steady_cadence_not_per_step():
    out = io.StringIO()
    c = Console(out, live=False, cadence_s=3600)
    c.stage_started("joint", 100)
    for step in range(1, 101):
        c.step_record(record(step, 1000.0 + step))
    lines = out.getvalue().splitlines()
    # the first record and the last step only: the cadence is an hour
    assert [line.split("]")[0] for line in lines] == ["[joint 1/100 video", "[joint 100/100 video"], lines
    assert "loss 1.500" in lines[-1] and "40.0 samples/s/worker" in lines[-1] and "data-wait 10%" in lines[-1]


def test_eta_comes_from_the_recent_step_rate():
    c = Console(io.StringIO(), live=False)
    for step in range(1, 21):
        c.step_record(record(step, 1000.0 + 2 * step))  # 0.5 steps/s
    stage = c.stages["joint"]
    assert abs(stage.eta_s() - 80 / 0.5) < 1e-6
    assert "ETA 2m40s" in stage.fields()


def test_warnings_are_printed_once():
    out = io.StringIO()
    c = Console(out, live=False)
    for _ in range(3):
        c.warn("bad input: skipped 2 of 100 rows")
    assert out.getvalue().count("warning: bad input") == 1


def test_a_restarted_worker_group_is_reported():
    out = io.StringIO()
    c = Console(out, live=False, cadence_s=0)
    c.stage_started("image", 50)
    for step in range(1, 8):
        c.step_record(record(step, 1000.0 + step, total=50, stage="image"))
    c.stage_started("image", 50, start_step=5, resumed_from="runs/x/checkpoints/00-image/step-00000005")
    text = out.getvalue()
    assert "warning: stage 'image': the worker group restarted at step 7 and resumed at step 5" in text, text


def test_live_bars_render_to_a_terminal_stream():
    out = io.StringIO()
    c = Console(out, live=True)
    c.stage_started("joint", 10)
    for step in range(1, 11):
        c.step_record(record(step, 1000.0 + step, total=10))
    c.say("a line above the bars")
    c.stage_finished("joint", 12.0)
    c.close()
    text = out.getvalue()
    assert "stage joint" in text and "10/10" in text and "a line above the bars" in text, text


def test_summary_names_outputs_and_headline_metrics_with_chance():
    summary = {
        "corpus": {"status": "skipped", "output": "runs/demo/corpus-1", "summary": {}},
        "evaluate": {"status": "ran", "output": "runs/demo/evaluate-2", "summary": {
            "report": "runs/demo/evaluate-2/report.md",
            "metrics": {"video_text": {"text->video R@1": {"value": 24.4, "chance": 2.2},
                                       "text->video mean rank": {"value": 5.0, "chance": 23.0}},
                        "video_qa": {"QA exact match (%)": {"value": 60.0, "chance": 25.0},
                                     "QA motion exact match (%)": {"value": 70.0, "chance": 25.0}}}}},
    }
    lines = summary_lines("pipeline", summary)
    text = "\n".join(lines)
    assert "report: runs/demo/evaluate-2/report.md" in text
    assert "video_text text->video R@1: 24.4 (chance 2.2)" in text
    assert "video_qa QA exact match (%): 60.0 (chance 25.0)" in text
    assert "mean rank" not in text and "motion" not in text  # headline metrics only; the full table is in the report


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


def test_process_output_goes_to_the_log_file_and_the_console_to_the_terminal(tmp_path):
    """A child process's fd 1 and 2 (as Ray's C++ code and forwarded worker output write them) land in the log;
    the console stream still reaches the original stdout."""
    log = tmp_path / "run.log"
    code = (
        "import os, subprocess, sys\n"
        "from omnivl import console\n"
        f"with console.process_output_to({str(log)!r}) as terminal:\n"
        "    print('python print'); sys.stderr.write('python stderr\\n')\n"
        "    os.write(2, b'fd2 write\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"child output\")'])\n"
        "    terminal.write('console line\\n')\n"
        "print('after the block')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["console line", "after the block"], result.stdout
    assert result.stderr == ""
    logged = log.read_text()
    for text in ("python print", "python stderr", "fd2 write", "child output"):
        assert text in logged, logged


def test_module_level_say_uses_the_active_console():
    out = io.StringIO()
    with console.use(Console(out, live=False)):
        console.say("hello")
        console.warn("careful")
        console.warn("careful")
    assert out.getvalue() == "hello\nwarning: careful\n"
