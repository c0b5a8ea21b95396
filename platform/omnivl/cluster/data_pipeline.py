"""The Ray Data seam: manifests -> decode + sample + tokenize in CPU actor pools -> fixed-shape uint8 batches.

Everything that is not Ray lives in `omnivl.data` (`RowDecoder` does the work); this module only wires it:

  rows (read on the driver)  ->  ray.data.from_arrow (blocks of `batch_size` rows)
                             ->  map_batches(_DecodeActor, compute=ActorPoolStrategy(min, max),
                                             num_cpus=cpus_per_actor, label_selector={"pool": "cpu-decode"})

Bad-input counts. Each decode actor sends the ledger of every batch it decoded to one small named actor
(`DataLedger`, 0 CPUs, in namespace "omnivl") and waits for the reply, so when a consumer has finished an
epoch every count is already there. The reply also says whether the skips have already made the epoch
fail its threshold (the manifest's row count is known up front), in which case the decode actor raises
`BadInputError` and the iteration fails early with the worst files named. At the end of an epoch or run,
call `enforce_bad_input_threshold()` (or just `bad_input_report()`) from the driver or any Train worker.
"""

from __future__ import annotations

import logging

import numpy as np
import ray

from omnivl.data.badinput import BadInputError, BadInputLedger
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.data.manifest import ManifestRow, read_manifest, rows_to_table

log = logging.getLogger(__name__)

NAMESPACE = "omnivl"
DEFAULT_LEDGER = "omnivl-data-ledger"
CPU_POOL = {"pool": "cpu-decode"}


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


class _DecodeActor:
    """The map_batches callable: one RowDecoder per actor (tokenizer and decoders loaded once)."""

    def __init__(self, sources, decode, modality, train, seed, epoch, key, total_rows, ledger) -> None:
        from omnivl.data.decode import RowDecoder

        self.decoder = RowDecoder(sources, decode, modality, train, seed, epoch)
        self.key, self.total_rows, self.ledger = key, total_rows, ledger
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out, delta = self.decoder(batch)
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
    """`wanted` if some alive node carries all its labels, else None (so a single-node cluster without
    labels still runs the decode actors instead of waiting forever for a node that never comes)."""
    if not wanted:
        return None
    for node in ray.nodes():
        labels = node.get("Labels") or {}
        if node.get("Alive") and all(labels.get(k) == v for k, v in wanted.items()):
            return dict(wanted)
    return None


_HANDLES: dict[tuple[str, str], object] = {}


def ledger_actor(name: str = DEFAULT_LEDGER):
    """The named ledger actor, created on first use. It belongs to the driver that created it, and Ray
    collects a non-detached actor once its creator drops the original handle (a handle got back through
    `get_if_exists` does not keep it alive), so the first handle is kept here per Ray job."""
    key = (ray.get_runtime_context().get_job_id(), name)
    if key not in _HANDLES:
        _HANDLES[key] = DataLedger.options(name=name, namespace=NAMESPACE, get_if_exists=True).remote()
    return _HANDLES[key]


def read_rows(sources: list[SourceConfig], modality: str, train: bool, seed: int) -> list[ManifestRow]:
    """Manifest rows of the sources of `modality`, shuffled with `seed` in training."""
    chosen = [s for s in sources if s.modality == modality]
    if not chosen:
        raise ValueError(f"no {modality} source among: {', '.join(s.name for s in sources) or '(none)'}")
    rows = [row for s in chosen for row in read_manifest(s)]
    if train:
        order = np.random.default_rng(seed).permutation(len(rows))
        rows = [rows[i] for i in order]
    return rows


def build_dataset(sources: list[SourceConfig], decode: DecodeConfig, *, modality: str, train: bool,
                  seed: int = 0, label_selector: dict | None = None, epoch: int = 0,
                  ledger: str = DEFAULT_LEDGER) -> "ray.data.Dataset":
    """A streaming Dataset of decoded `modality` rows of `sources` (others are ignored): columns
    pixels uint8 [3,S,S] | [T,3,S,S], input_ids int64 [L], attention_mask int64 [L], label_id int64,
    prompt_len int64 (see `omnivl.data.decode`), text str.

    `label_selector`: decode actors go to nodes with these labels (default {"pool": "cpu-decode"}; pass {}
    for anywhere), applied only if the cluster has such a node. `seed`/`epoch` fix row order (training) and
    every augmentation. Ray must be initialized. Raises ValueError if no source has this modality."""
    rows = read_rows(sources, modality, train, seed)
    key = dataset_key(sources, modality, train)
    ledger_handle = ledger_actor(ledger)
    selector = decode_label_selector(CPU_POOL if label_selector is None else label_selector)
    pool = decode.pool(modality)
    chunk = pool.batch_size
    table = rows_to_table(rows)
    blocks = [table.slice(i, chunk) for i in range(0, max(len(rows), 1), chunk)]
    extra = {"label_selector": selector} if selector else {}
    return ray.data.from_arrow(blocks).map_batches(
        _DecodeActor,
        fn_constructor_kwargs={
            "sources": [s.to_dict() for s in sources if s.modality == modality], "decode": decode.to_dict(),
            "modality": modality, "train": train, "seed": seed, "epoch": epoch, "key": key,
            "total_rows": len(rows), "ledger": ledger_handle,
        },
        batch_size=chunk, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        num_cpus=pool.cpus_per_actor, **extra,
    )


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

