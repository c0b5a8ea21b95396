"""The Ray Data seam: manifests -> decode + sample + tokenize in CPU actor pools -> fixed-shape uint8 batches.

Everything that is not Ray lives in `omnivl.data` (`manifest_index` plans chunks, `stream` orders them,
`RowDecoder` decodes); this module only wires it:

  plan (driver: Parquet footers, cached row indexes; never the rows)
    -> read_datasource(ManifestDatasource): one read task per window of chunks, run on the workers
    -> map_batches(_DecodeActor, compute=ActorPoolStrategy(min, max), num_cpus=cpus_per_actor,
                   label_selector={"pool": "cpu-decode"})

A training dataset is one stream over many epochs (`omnivl.data.stream`): rows [start_row, end_row) of it,
each row tagged with its epoch, so every epoch draws new augmentation and a new chunk order, and a resumed
stage continues the same sequence. An evaluation dataset is one pass in manifest order.

Bad-input counts. Each decode actor sends the ledger of every batch it decoded to one small named actor
(`DataLedger`, 0 CPUs, in namespace "omnivl") and waits for the reply, so when a consumer has finished an
epoch every count is already there. The reply also says whether the skips have already made the stream
fail its threshold (its row count is known up front), in which case the decode actor raises
`BadInputError` and the iteration fails early with the worst files named. At the end of an epoch or run,
call `enforce_bad_input_threshold()` (or just `bad_input_report()`) from the driver or any Train worker.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from omnivl.cluster.runtime import on_driver_node
from omnivl.data.badinput import BadInputError, BadInputLedger
from omnivl.data.config import DEFAULT_WINDOW_ROWS, DecodeConfig, SourceConfig
from omnivl.data.manifest import media_exts, parent_of, read_chunk
from omnivl.data.manifest_index import plan_sources
from omnivl.data.stream import ReadUnit, StreamPlan, in_order_units, window_permutation

log = logging.getLogger(__name__)

NAMESPACE = "omnivl"
DEFAULT_LEDGER = "omnivl-data-ledger"
CPU_POOL = {"pool": "cpu-decode"}
# Read tasks parse manifest chunks: light next to decoding. They reserve no CPU, so a decode pool that takes
# every CPU of its nodes cannot starve them (and deadlock the stream); their number is capped instead.
READ_TASK_CPUS = 0
MAX_CONCURRENT_READS = 2


@ray.remote(num_cpus=0, max_concurrency=8)
class DataLedger:
    """Bad-input ledgers of the datasets of one driver, keyed by `dataset_key`, plus where decoding ran."""

    def __init__(self) -> None:
        self.ledgers: dict[str, BadInputLedger] = {}
        self.nodes: dict[str, set[str]] = {}

    def record(self, key: str, delta: dict, node_id: str, max_bad_fraction: float, total_rows: int) -> str:
        """Add one batch's counts; returns an error message if the dataset is now over its threshold."""
        ledger = self.ledgers.setdefault(key, BadInputLedger()).merge(delta)
        self.nodes.setdefault(key, set()).add(node_id)
        return ledger.error_message(max_bad_fraction, total_rows) if ledger.exceeds(max_bad_fraction, total_rows) else ""

    def report(self, key: str | None = None) -> dict:
        keys = [key] if key else list(self.ledgers)
        merged = BadInputLedger()
        for k in keys:
            if k in self.ledgers:
                merged.merge(self.ledgers[k])
        return {"ledger": merged.to_dict(), "decode_nodes": sorted(set().union(*[self.nodes.get(k, set()) for k in keys]))}

    def reset(self, key: str | None = None) -> None:
        for k in [key] if key else list(self.ledgers):
            self.ledgers.pop(k, None)
            self.nodes.pop(k, None)


class DecodeMetrics:
    """Data-plane counters through Ray's metrics (each node's metrics port; Prometheus names get the `ray_`
    prefix and `_total`): rows decoded (kept), frames decoded (an image is one frame), rows skipped and rows
    repaired by bad-input reason. Fed from each batch's ledger; tags: modality, mode (train | eval), reason."""

    def __init__(self, modality: str, train: bool) -> None:
        from ray.util.metrics import Counter

        self.tags = {"modality": modality, "mode": "train" if train else "eval"}
        keys, by_reason = ("modality", "mode"), ("modality", "mode", "reason")
        self.rows = Counter("omnivl_data_rows_decoded", "rows decoded and kept", tag_keys=keys)
        self.frames = Counter("omnivl_data_frames_decoded", "frames decoded (an image is one)", tag_keys=keys)
        self.skipped = Counter("omnivl_data_rows_skipped", "rows skipped by bad-input reason", tag_keys=by_reason)
        self.repaired = Counter("omnivl_data_rows_repaired", "rows repaired by reason (kept)", tag_keys=by_reason)

    def record(self, out: dict[str, np.ndarray], delta: BadInputLedger) -> None:
        pixels = out["pixels"]
        if len(pixels):
            self.rows.inc(len(pixels), tags=self.tags)
            self.frames.inc(int(np.prod(pixels.shape[:-3])), tags=self.tags)  # N or N*T
        for counter, counts in ((self.skipped, delta.skipped), (self.repaired, delta.repaired)):
            for reason, n in counts.items():
                if n:
                    counter.inc(n, tags={**self.tags, "reason": reason})


class _DecodeActor:
    """The map_batches callable: one RowDecoder per actor (tokenizer and decoders loaded once)."""

    def __init__(self, sources, decode, modality, train, seed, key, total_rows, ledger) -> None:
        from omnivl.data.decode import RowDecoder

        self.decoder = RowDecoder(sources, decode, modality, train, seed)
        self.key, self.total_rows, self.ledger = key, total_rows, ledger
        self.node_id = ray.get_runtime_context().get_node_id()
        self.metrics = DecodeMetrics(modality, train)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out, delta = self.decoder(batch)
        self.metrics.record(out, delta)
        for reason, files in delta.examples.items():
            if reason in delta.skipped:
                log.warning("skipped %d row(s), %s: %s", delta.skipped[reason], reason, files[0])
        verdict = ray.get(self.ledger.record.remote(self.key, delta.to_dict(), self.node_id,
                                                    self.decoder.cfg.max_bad_fraction, self.total_rows))
        if verdict:
            raise BadInputError(verdict)
        return out


def dataset_key(sources: list[SourceConfig], modality: str, train: bool) -> str:
    """The ledger key of a dataset: modality, mode and source names."""
    names = "+".join(s.name for s in sources if s.modality == modality)
    return f"{modality}:{'train' if train else 'eval'}:{names}"


def decode_label_selector(wanted: dict | None) -> dict | None:
    """`wanted` if some alive node carries all its labels, or if an autoscaler manages the cluster (scale from
    zero); else None, so a cluster without such nodes and without an autoscaler still runs the decode actors.
    See omnivl.cluster.capacity.pool_label_selector."""
    from omnivl.cluster.capacity import pool_label_selector

    return pool_label_selector(wanted)


_HANDLES: dict[tuple[str, str, str], object] = {}


def ledger_actor(name: str = DEFAULT_LEDGER):
    """The named ledger actor, created on first use. It belongs to the driver that created it, and Ray
    collects a non-detached actor once its creator drops the original handle (a handle got back through
    `get_if_exists` does not keep it alive), so the first handle is kept here per Ray job. Job ids repeat across
    clusters (every new cluster's first driver is job 01000000), so the key also holds the driver's node id: a
    process that shuts Ray down and starts a new cluster must not reuse the old cluster's handle (Ray aborts the
    process when a stale handle is serialized)."""
    context = ray.get_runtime_context()
    key = (context.get_node_id(), context.get_job_id(), name)
    if key not in _HANDLES:
        _HANDLES[key] = DataLedger.options(name=name, namespace=NAMESPACE, get_if_exists=True,
                                           scheduling_strategy=on_driver_node()).remote()
    return _HANDLES[key]


def ray_mapper(fn: Callable, items: list) -> list:
    """A `manifest_index.Mapper` that runs `fn` on Ray workers (row-index scans of large manifests)."""
    if not items:
        return []
    remote = ray.remote(num_cpus=1)(_call)
    return ray.get([remote.remote(fn, x) for x in items])


def _call(fn: Callable, x):
    return fn(x)


def plan_stream(sources: list[SourceConfig], modality: str, seed: int, window_rows: int) -> StreamPlan:
    """The stream plan of the sources of `modality` (row counts from footers and cached indexes).
    Raises ValueError if no source has this modality."""
    chosen = [s for s in sources if s.modality == modality]
    if not chosen:
        raise ValueError(f"no {modality} source among: {', '.join(s.name for s in sources) or '(none)'}")
    return StreamPlan(tuple(plan_sources(chosen, ray_mapper)), seed, window_rows)


StartRow = int | Callable[[], int]


@dataclass(frozen=True)
class StreamRange:
    """Which rows of a training stream a dataset reads. `start` may be a callable evaluated each time the
    dataset starts executing (after a worker-group restart, where the newest checkpoint says)."""

    start: StartRow
    end: int

    def start_row(self) -> int:
        return int(self.start() if callable(self.start) else self.start)


class ManifestDatasource(Datasource):
    """Ray Data's read side for our manifests: read tasks of `ReadUnit`s, planned at execution time."""

    def __init__(self, plan: StreamPlan, sources: list[SourceConfig], stream: StreamRange | None,
                 block_rows: int | None) -> None:
        super().__init__()
        self.plan, self.stream, self.block_rows = plan, stream, block_rows
        self.exts = media_exts(sources[0].modality)

    def units(self) -> list[ReadUnit]:
        if self.stream is None:
            return in_order_units(list(self.plan.chunks))
        return list(self.plan.units(self.stream.start_row(), self.stream.end))

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        read = functools.partial(read_unit, seed=self.plan.seed, exts=self.exts, block_rows=self.block_rows)
        return [ReadTask(functools.partial(read, unit), BlockMetadata(num_rows=unit.num_rows, size_bytes=None,
                                                                     input_files=None, exec_stats=None))
                for unit in self.units()]


def read_unit(unit: ReadUnit, seed: int, exts: tuple[str, ...], block_rows: int | None) -> list[pa.Table]:
    """One read task: the unit's chunks, rows in the unit's order, tagged with its epoch, as one block or in
    blocks of `block_rows` rows."""
    table = pa.concat_tables([read_chunk(c, parent_of(c.file), exts) for c in unit.chunks])
    table = table.take(window_permutation(seed, unit, table.num_rows))
    table = table.append_column("epoch", pa.array(np.full(table.num_rows, unit.epoch, dtype=np.int64)))
    if block_rows is None:
        return [table]
    return [table.slice(start, block_rows) for start in range(0, table.num_rows, block_rows)]


def build_dataset(sources: list[SourceConfig], decode: DecodeConfig, *, modality: str, train: bool,
                  seed: int = 0, label_selector: dict | None = None, stream: StreamRange | None = None,
                  plan: StreamPlan | None = None, window_rows: int = DEFAULT_WINDOW_ROWS,
                  ledger: str = DEFAULT_LEDGER) -> "ray.data.Dataset":
    """A streaming Dataset of decoded `modality` rows of `sources` (others are ignored): columns
    pixels uint8 [3,S,S] | [T,3,S,S], input_ids int64 [L], attention_mask int64 [L], label_id int64,
    prompt_len int64, text str, row_key str (see `omnivl.data.decode`).

    Training (`train`): rows [stream.start, stream.end) of the multi-epoch stream (default: one epoch);
    evaluation: one pass in manifest order. `plan`: a plan made already (`plan_stream`), else made here
    with `window_rows` (the shuffle buffer: `ShuffleConfig`).
    `label_selector`: decode actors go to nodes with these labels (default {"pool": "cpu-decode"}; pass {}
    for anywhere), applied only if the cluster has such a node. `seed` fixes chunk order and every
    augmentation. Ray must be initialized. Raises ValueError if no source has this modality."""
    chosen = [s for s in sources if s.modality == modality]
    plan = plan or plan_stream(chosen, modality, seed, window_rows)
    if train and stream is None:
        stream = StreamRange(0, plan.epoch_rows)
    total_rows = (stream.end - stream.start_row()) if train else plan.epoch_rows
    selector = decode_label_selector(CPU_POOL if label_selector is None else label_selector)
    pool = decode.pool(modality)
    extra = {"label_selector": selector} if selector else {}
    # Training: one block per window (Ray's default block shaping; small blocks cost driver memory and time at
    # 10M rows, measured). Evaluation: one decode batch per block, so every actor of the pool gets a share of
    # a small source.
    source = ManifestDatasource(plan, chosen, stream if train else None,
                                block_rows=None if train else pool.batch_size)
    reads = ray.data.read_datasource(source, num_cpus=READ_TASK_CPUS, label_selector=selector,
                                     concurrency=max(1, min(MAX_CONCURRENT_READS, len(source.units()))))
    decoded = reads.map_batches(
        _DecodeActor,
        fn_constructor_kwargs={
            "sources": [s.to_dict() for s in chosen], "decode": decode.to_dict(), "modality": modality,
            "train": train, "seed": seed, "key": dataset_key(sources, modality, train),
            "total_rows": total_rows, "ledger": ledger_actor(ledger),
        },
        batch_size=pool.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        num_cpus=pool.cpus_per_actor, **extra,
    )
    if not train:  # keep the batch-sized blocks: Ray's default re-merges them up to 128 MiB
        decoded.context.target_max_block_size = None
    return decoded


def bad_input_report(key: str | None = None, *, ledger: str = DEFAULT_LEDGER) -> dict:
    """The bad-input summary so far (all datasets of this driver, or the one with `dataset_key` = key):
    rows_seen, rows_skipped, skipped_fraction, skipped_by_reason, repaired_by_reason, worst_files,
    decode_nodes. Callable from the driver or any Ray worker of the same job."""
    reply = ray.get(ray.get_actor(ledger, namespace=NAMESPACE).report.remote(key))
    return {**BadInputLedger.from_dict(reply["ledger"]).summary(), "decode_nodes": reply["decode_nodes"]}


def enforce_bad_input_threshold(max_bad_fraction: float, key: str | None = None, *,
                                ledger: str = DEFAULT_LEDGER) -> dict:
    """Call at the end of an epoch/run: returns the report, or raises BadInputError naming the worst files
    if the skipped fraction is over `max_bad_fraction` (DecodeConfig.max_bad_fraction)."""
    reply = ray.get(ray.get_actor(ledger, namespace=NAMESPACE).report.remote(key))
    counts = BadInputLedger.from_dict(reply["ledger"]).check(max_bad_fraction)
    return {**counts.summary(), "decode_nodes": reply["decode_nodes"]}


def reset_bad_input_report(key: str | None = None, *, ledger: str = DEFAULT_LEDGER) -> None:
    """Forget the counts (e.g. between epochs, if each epoch should be judged on its own)."""
    ray.get(ray.get_actor(ledger, namespace=NAMESPACE).reset.remote(key))

