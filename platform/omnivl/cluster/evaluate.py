"""The `evaluate` job's Ray seam: the media passes of `omnivl.eval.media.MediaPass` as Ray Data actor pools.
A source is decoded by the CPU pipeline training uses (eval mode: centre crop, middle frames, no flip) and the
model runs in an actor pool, loaded once per actor (on GPU with `eval.use_gpu`, at `eval.precision`).

Everything else is plain Python in `omnivl.eval`: the job body (`omnivl.eval.job`), each source's manifest read
once (`omnivl.eval.source`), the tasks and their typed results (`omnivl.eval.tasks`, `omnivl.eval.results`).
"""

from __future__ import annotations

import torch

from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.eval import inference
from omnivl.eval.config import GenerationSettings
from omnivl.eval.embedding import Embedded, collect
from omnivl.eval.job import run_evaluation
from omnivl.eval.media import LocalPass
from omnivl.eval.source import EvalSource
from omnivl.spec.jobs import EvaluateJob

__all__ = ["EmbedActor", "GenerateActor", "RayPass", "embed_locally", "run_job"]

GPU_MODEL_ACTORS = 1  # one model replica on the GPU (a single-GPU node is the common evaluation host)
CPU_MODEL_ACTORS = 2  # model replicas on CPUs, one torch thread each
ACTOR_CPUS = 1


def run_job(job: EvaluateJob) -> dict:
    """Runs the `evaluate` job with the media passes in Ray actor pools (Ray must be initialized); returns
    {report: uri, metrics: headline numbers per source}."""
    driver_device = "cuda" if job.eval.use_gpu and torch.cuda.is_available() else "cpu"
    cfg = job.eval
    return run_evaluation(job, lambda export: RayPass(job.data.decode, export, cfg.batch_size, cfg.use_gpu,
                                                      cfg.precision), driver_device)


# ------------------------------------------------------------------------------------------ Ray actors


class _ModelActor:
    torch_threads = 1

    def __init__(self, export: str, modality: str, device: str = "cpu", precision: str = "fp32") -> None:
        from omnivl.models.export import load_export

        torch.set_num_threads(self.torch_threads)
        self.model = load_export(export, device)
        self.modality, self.precision = modality, precision


class EmbedActor(_ModelActor):
    """Turns decoded batches into embeddings and frozen features (`inference.embed_batch`); with `caption`
    settings also writes a caption per row (column `generated`) from the same decoded pixels, with
    `keep_tokens` adds every row's visual tokens (column `tokens`, for re-ranking)."""

    def __init__(self, export: str, modality: str, device: str = "cpu", precision: str = "fp32",
                 tokenizer: str | None = None, caption: dict | None = None, keep_tokens: bool = False) -> None:
        super().__init__(export, modality, device, precision)
        self.caption = _Generator(tokenizer, caption) if caption is not None else None
        self.keep_tokens = keep_tokens

    def __call__(self, batch: dict) -> dict:
        out = inference.embed_batch(self.model, batch, self.modality, keep_tokens=self.keep_tokens,
                                    precision=self.precision)
        if self.caption is not None:
            out["generated"] = self.caption(self.model, batch, self.modality, False, self.precision)["generated"]
        return out


class _Generator:
    """A tokenizer and generation settings, applied to decoded batches."""

    def __init__(self, tokenizer: str, settings: dict) -> None:
        from omnivl.data.text import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer)
        self.settings = GenerationSettings.model_validate(settings)

    def __call__(self, model, batch: dict, modality: str, answer: bool, precision: str) -> dict:
        return inference.generate_batch(model, batch, modality, self.tokenizer, self.settings, answer, precision)


class GenerateActor(_ModelActor):
    """Writes a caption, or the answer to the row's question, for every decoded row."""

    def __init__(self, export: str, modality: str, device: str, precision: str, tokenizer: str, settings: dict,
                 answer: bool) -> None:
        super().__init__(export, modality, device, precision)
        self.generator, self.answer = _Generator(tokenizer, settings), answer

    def __call__(self, batch: dict) -> dict:
        return self.generator(self.model, batch, self.modality, self.answer, self.precision)


def _run_actor(src: SourceConfig, decode: DecodeConfig, actor, kwargs: dict, batch_size: int, use_gpu: bool):
    """Decode `src` (eval mode) and map `actor` over it in a pool; yields the output batches."""
    import ray.data

    from omnivl.cluster.data_pipeline import build_dataset

    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = build_dataset([src], decode, modality=src.modality, train=False, seed=0)
    ds = ds.map_batches(actor, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
                        num_gpus=1 if use_gpu else 0, num_cpus=ACTOR_CPUS,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=GPU_MODEL_ACTORS if use_gpu
                                                           else CPU_MODEL_ACTORS))
    return ds.iter_batches(batch_size=None, batch_format="numpy")


# ------------------------------------------------------------------------------------------ the media pass


class RayPass:
    """`omnivl.eval.media.MediaPass` over Ray Data: each pass decodes the source once and runs the model in an
    actor pool, at `precision`; the driver gathers the outputs by row key."""

    def __init__(self, decode: DecodeConfig, export: str, batch_size: int, use_gpu: bool,
                 precision: str = "fp32") -> None:
        self.decode, self.export, self.batch_size, self.use_gpu = decode, export, batch_size, use_gpu
        self.precision = precision

    def _actor_kwargs(self, modality: str) -> dict:
        return {"export": self.export, "modality": modality, "device": "cuda" if self.use_gpu else "cpu",
                "precision": self.precision}

    def embed(self, source: EvalSource, *, caption: GenerationSettings | None = None,
              keep_tokens: bool = False) -> Embedded:
        kwargs = {**self._actor_kwargs(source.modality), "tokenizer": self.decode.tokenizer,
                  "caption": caption.to_dict() if caption is not None else None, "keep_tokens": keep_tokens}
        batches = _run_actor(source.config, self.decode, EmbedActor, kwargs, self.batch_size, self.use_gpu)
        return collect(batches, f"{source.name} ({source.manifest})", source.uri if keep_tokens else None)

    def generate(self, source: EvalSource, settings: GenerationSettings, answer: bool) -> dict[str, str]:
        kwargs = {**self._actor_kwargs(source.modality), "tokenizer": self.decode.tokenizer,
                  "settings": settings.to_dict(), "answer": answer}
        out: dict[str, str] = {}
        for b in _run_actor(source.config, self.decode, GenerateActor, kwargs, self.batch_size, self.use_gpu):
            out.update(zip((str(k) for k in b["row_key"]), (str(g) for g in b["generated"])))
        return out

    def bad_input(self) -> dict:
        from omnivl.cluster.data_pipeline import bad_input_report

        try:
            return bad_input_report()
        except ValueError:  # no dataset was decoded in this driver
            return {}


def embed_locally(src: SourceConfig, decode: DecodeConfig, export: str, batch_size: int = 32) -> Embedded:
    """The embeddings of every decodable row of `src` in this process, without Ray (the reference for the Ray
    path; `omnivl.eval.media.LocalPass`)."""
    return LocalPass(decode, export, batch_size).embed(EvalSource.read(src))
