"""The tasks of the `evaluate` job, per source: which apply (`tasks_for`), the embedding pass they share, and
each task's `TaskResult` gathered into a `SourceResult`. Plain Python: the media passes come in through
`EvalContext.media` (Ray actor pools in `omnivl.cluster.evaluate`, or `omnivl.eval.media.LocalPass`).

  text sources   retrieval both ways (contrastive, then the top `rerank_k` re-ranked by the matching head;
                 for videos also the motion-direction probe) and captioning
  label sources  zero-shot classification with a prompt ensemble, and a linear probe on frozen features
  qa sources     question answering, exact match
"""

from __future__ import annotations

from typing import Callable

from omnivl import console
from omnivl.data.config import SourceConfig
from omnivl.eval.config import TASK_KINDS, EvalConfig
from omnivl.eval.embedding import Embedded, check_token_budget
from omnivl.eval.results import SourceResult, TaskResult
from omnivl.eval.source import EvalSource
from omnivl.eval.tasks.context import EvalContext
from omnivl.eval.tasks.generation import captioning, qa
from omnivl.eval.tasks.labels import linear_probe, zero_shot
from omnivl.eval.tasks.retrieval import retrieval

Task = Callable[[EvalSource, EvalContext, "Embedded | None"], TaskResult]
TASKS: dict[str, Task] = {"retrieval": retrieval, "zero_shot": zero_shot, "linear_probe": linear_probe,
                          "captioning": captioning, "qa": qa}
EMBEDDING_TASKS = frozenset({"retrieval", "zero_shot", "linear_probe"})  # the tasks that read `Embedded`

__all__ = ["TASKS", "EvalContext", "evaluate_source", "tasks_for"]


def tasks_for(src: SourceConfig, cfg: EvalConfig) -> list[str]:
    """The tasks of `cfg` that evaluate `src` (the linear probe only sources with a train split named)."""
    return [t for t in cfg.tasks if src.kind in TASK_KINDS[t] and (t != "linear_probe" or src.name in cfg.probe_train)]


def evaluate_source(source: EvalSource, tasks: list[str], ctx: EvalContext) -> SourceResult:
    """Run `tasks` on one source: one embedding pass shared by the tasks that need it, then each task."""
    result = SourceResult(source.modality, source.kind)
    emb = embedding_pass(source, tasks, ctx) if EMBEDDING_TASKS.intersection(tasks) else None
    if emb is not None:
        result.rows = emb.rows
    for task in tasks:
        console.say(f"evaluate {source.name}: {task}")
        result.add(task, TASKS[task](source, ctx, emb))
    return result


def embedding_pass(source: EvalSource, tasks: list[str], ctx: EvalContext) -> Embedded:
    """Embeddings of every decodable row. Captions are generated in the same pass when captioning is asked for,
    and re-ranking keeps the visual tokens of each item: the media are decoded and the model loaded once."""
    caption = ctx.cfg.captioning if "captioning" in tasks else None
    keep_tokens = "retrieval" in tasks and ctx.cfg.rerank_k > 0
    if keep_tokens:  # before any work: a source too large to re-rank this way fails now
        tokens, width = ctx.driver.token_shape(source.modality)
        check_token_budget(f"{source.name} ({source.manifest})", source.items(), tokens, width)
    console.say(f"evaluate {source.name}: embedding{' + captioning' if caption else ''} with {ctx.export}")
    return ctx.media.embed(source, caption=caption, keep_tokens=keep_tokens)
