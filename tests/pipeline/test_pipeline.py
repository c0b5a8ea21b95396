"""Pipelines: step outputs addressed by config+input hashes; re-runs skip done steps and redo changed ones."""

import json
import os
from pathlib import Path

import pytest

from omnivl import storage
from omnivl.pipeline.executor import LATEST_DIR, MARKER, plan, run_pipeline
from omnivl.spec import validate_spec


def evaluate(checkpoint, k):
    return {"kind": "evaluate", "checkpoint": checkpoint, "eval": {"rerank_k": k},
            "data": {"sources": [{"name": "s", "manifest": "m.jsonl", "modality": "image"}]}}


def chain(root, seeds=(1, 2, 3)):
    """a -> b -> c: a synth job, then two evaluate jobs each consuming the step before; `seeds` vary a field."""
    return {
        "kind": "pipeline",
        "output_root": str(root),
        "steps": [
            {"name": "a", "job": {"kind": "synth", "corpus": {"seed": seeds[0]}}},
            {"name": "b", "job": evaluate("${steps.a}/export", seeds[1])},
            {"name": "c", "job": evaluate("${steps.b}/export", seeds[2])},
        ],
    }


def knob(job):
    return job.corpus.seed if job.kind == "synth" else job.eval.rerank_k


class Recorder:
    """A step runner that does real (small) work: writes a file into the step's output, recording calls."""

    def __init__(self):
        self.ran = []

    def __call__(self, job):
        self.ran.append(job.name)
        storage.write_text(storage.join(job.output, "result.txt"), f"seed={knob(job)}")
        return {"seed": knob(job)}


def run(raw, **kw):
    rec = Recorder()
    results = run_pipeline(validate_spec(raw), rec, log=lambda *_: None, **kw)
    return rec.ran, results


def test_first_run_runs_everything_and_writes_markers(tmp_path):
    ran, results = run(chain(tmp_path))
    assert ran == ["a", "b", "c"]
    for r in results:
        assert r.output.startswith(str(tmp_path / r.name) + "-")
        marker = json.loads(storage.read_text(storage.join(r.output, MARKER)))
        assert marker["step"] == r.name and marker["summary"]["seed"] == r.summary["seed"]


def test_unchanged_rerun_does_no_work(tmp_path):
    run(chain(tmp_path))
    ran, results = run(chain(tmp_path))
    assert ran == []
    assert [r.status for r in results] == ["skipped"] * 3
    assert results[2].summary == {"seed": 3}


def test_changing_one_step_reruns_it_and_its_dependents_only(tmp_path):
    first = {p.name: p.output for p in plan(validate_spec(chain(tmp_path)))}
    run(chain(tmp_path))
    ran, results = run(chain(tmp_path, seeds=(1, 20, 3)))
    assert ran == ["b", "c"]
    outs = {r.name: r.output for r in results}
    assert outs["a"] == first["a"] and outs["b"] != first["b"] and outs["c"] != first["c"]
    # the old outputs are kept: switching back is free
    ran, _ = run(chain(tmp_path))
    assert ran == []


def test_latest_links_follow_the_newest_finished_output_of_each_step(tmp_path):
    run(chain(tmp_path))
    _, changed = run(chain(tmp_path, seeds=(1, 20, 3)))
    for r in changed:
        link = tmp_path / LATEST_DIR / r.name
        assert link.is_symlink() and link.resolve() == Path(r.output).resolve(), r.name
        assert (link / "result.txt").read_text() == f"seed={r.summary['seed']}"
    assert not os.path.isabs(os.readlink(tmp_path / LATEST_DIR / "b"))  # relative: the runs directory can move
    _, back = run(chain(tmp_path))  # skipped steps point the links back at their outputs
    assert (tmp_path / LATEST_DIR / "b").resolve() == Path(back[1].output).resolve()


def test_independent_step_is_not_rerun(tmp_path):
    raw = chain(tmp_path)
    raw["steps"][2]["job"]["checkpoint"] = "elsewhere"  # c no longer consumes b
    run(raw)
    raw2 = chain(tmp_path, seeds=(1, 20, 3))
    raw2["steps"][2]["job"]["checkpoint"] = "elsewhere"
    ran, _ = run(raw2)
    assert ran == ["b"]


def test_references_are_substituted_with_step_outputs(tmp_path):
    seen = {}

    def runner(job):
        seen[job.output] = job
        storage.write_text(storage.join(job.output, "x"), "1")
        return {}

    results = run_pipeline(validate_spec(chain(tmp_path)), runner, log=lambda *_: None)
    b = seen[results[1].output]
    assert b.name == "b" and b.checkpoint == results[0].output + "/export"
    assert seen[results[2].output].checkpoint == results[1].output + "/export"


def test_failed_step_is_not_marked_done_and_earlier_steps_stay(tmp_path):
    calls = []

    def flaky(job):
        calls.append(job.name)
        if job.name == "b":
            raise RuntimeError("boom")
        storage.write_text(storage.join(job.output, "x"), "1")
        return {}

    spec = validate_spec(chain(tmp_path))
    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline(spec, flaky, log=lambda *_: None)
    done = {p.name: p.done for p in plan(spec)}
    assert done == {"a": True, "b": False, "c": False}
    ran, _ = run(chain(tmp_path))
    assert ran == ["b", "c"]


def test_force_reruns_everything(tmp_path):
    run(chain(tmp_path))
    ran, _ = run(chain(tmp_path), force=True)
    assert ran == ["a", "b", "c"]


def test_outputs_on_s3(s3_bucket):
    root = f"{s3_bucket}/runs"
    ran, results = run(chain(root))
    assert ran == ["a", "b", "c"]
    assert all(r.output.startswith(root + "/") for r in results)
    assert storage.read_text(storage.join(results[0].output, "result.txt")) == "seed=1"
    ran, _ = run(chain(root, seeds=(1, 2, 30)))
    assert ran == ["c"]
