"""The `finetune` job kind: start from a pretraining export, train one task's objectives on task data, write
the fine-tuned export and (with an `eval:` block) evaluate it on held-out sources.

Training is `omnivl.cluster.training`, the same code as pretraining (checkpoints, resume, metrics, export);
fine-tuning differs only in where stage 0 starts (the export's weights, with fresh momentum encoders, queues
and optimizer) and in the objectives (`FinetuneJob.loss_weights`). QA needs nothing more: every decoded batch
carries `prompt_len`, and the LM loss never trains on the question tokens before it.
"""

from __future__ import annotations

from omnivl import storage
from omnivl.cluster.training import run_dir_of, run_training
from omnivl.spec.jobs import DataSpec, EvaluateJob, FinetuneJob

EVAL_DIR = "eval"
# Architecture entries that do not shape the weights: fine-tuning may change them freely.
FREE_ARCH_KEYS = ("queue_size", "grad_checkpointing", "dropout")


def run_job(job: FinetuneJob) -> dict:
    """Fine-tune, export, evaluate. Raises ValueError (before any training) if `init` does not hold a model of
    the spec's architecture, FileNotFoundError if it holds no export."""
    export = init_export(job)
    summary = run_training(job, init_export=export)
    summary["init"] = export
    if job.eval is not None:
        summary["eval"] = evaluate(job, summary["export"])
    return summary


def init_export(job: FinetuneJob) -> str:
    """The export `job.init` names (an export directory or a pretraining run holding one), checked against
    `job.model`."""
    from omnivl.models.export import resolve_export

    export = resolve_export(storage.absolute(job.init))
    check_architecture(job, export)
    return export


def check_architecture(job: FinetuneJob, export: str) -> None:
    """Raises ValueError naming the first field where the spec's model and the export's differ: a `model` field
    the spec sets (the check `evaluate` makes), else the resolved architecture (layer counts, widths, ...)."""
    from omnivl.eval.job import check_model_matches
    from omnivl.models.export import read_export_config
    from omnivl.models.sizes import resolve_arch

    check_model_matches(job, export)
    _, arch = read_export_config(export)
    diff = first_difference(weight_shaping(resolve_arch(job.model).to_dict()), weight_shaping(arch.to_dict()))
    if diff:
        path, want, have = diff
        raise ValueError(f"model: the spec's architecture has {path} = {want!r} but init {export} has {have!r}")


def weight_shaping(arch: dict) -> dict:
    return {k: weight_shaping(v) if isinstance(v, dict) else v for k, v in arch.items() if k not in FREE_ARCH_KEYS}


def first_difference(a, b, path: str = "arch") -> tuple[str, object, object] | None:
    """(dotted path, a's value, b's value) of the first place two nested dicts differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    return None if a == b else (path, a, b)


def evaluate(job: FinetuneJob, export: str) -> dict:
    """The `evaluate` job over the fine-tuned export and the held-out sources, run in this process; its report
    goes to `<run>/eval/`."""
    from omnivl.cluster.evaluate import run_job as run_evaluate

    settings = job.eval.model_dump(exclude={"sources"})
    by_name = {s.name: s for s in job.data.sources}
    ev = EvaluateJob(name=f"{job.name}-eval", output=storage.join(run_dir_of(job), EVAL_DIR), checkpoint=export,
                     model=job.model, data=DataSpec(sources=[by_name[n] for n in job.eval.sources],
                                                    decode=job.data.decode),
                     eval=settings, tracking=job.tracking)  # logs into this run's trackers
    return run_evaluate(ev)
