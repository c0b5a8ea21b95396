"""Training metrics: a JSONL file per run, one-line progress, and PNG curves at the end of each stage."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Iterable

from omnivl import storage

METRICS_FILE = "metrics.jsonl"

PLOTTED = [
    ("loss", ["loss", "loss_vlc", "loss_vlm", "loss_lm", "loss_cls"]),
    ("warm-up accuracy", ["cls_accuracy"]),
    ("learning rate", ["lr"]),
    ("temperature", ["temperature"]),
    ("samples/s per worker", ["samples_per_s"]),
    ("data-wait fraction", ["data_wait_frac"]),
    ("queue fill", ["queue_fill"]),
]
PER_MODALITY = {"loss", "samples_per_s"}
# evaluation during training (`omnivl.eval.live`): records of kind "eval", keys eval_<source>_<metric>[_chance]
EVAL_KEY = re.compile(r"^eval_(?P<source>.+)_(?P<metric>t2[iv]_r1|[iv]2t_r1|zeroshot_top1)$")
EVAL_NAMES = {"t2i_r1": "t→i R@1", "i2t_r1": "i→t R@1", "t2v_r1": "t→v R@1", "v2t_r1": "v→t R@1",
              "zeroshot_top1": "zero-shot top-1"}


class MetricsFile:
    """Appends one JSON object per logged step to a local file (the run directory's `metrics.jsonl`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    log = append  # a RunLog sink (omnivl.train.run_log)

    def records(self) -> list[dict]:
        return read_records(self.path)


def local_metrics_path(run_dir: str) -> Path:
    """Rank 0 appends step records to a local file; on S3 it is uploaded with every checkpoint."""
    if storage.is_s3(run_dir):
        return Path(tempfile.gettempdir(), "omnivl-metrics", run_dir.replace("/", "_"), METRICS_FILE)
    return Path(run_dir, METRICS_FILE)


def upload_metrics(run_dir: str) -> None:
    if storage.is_s3(run_dir):
        storage.write_bytes(storage.join(run_dir, METRICS_FILE), local_metrics_path(run_dir).read_bytes())


def read_records(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return out


def progress_line(r: dict) -> str:
    """`[joint 120/300 video] loss 3.21 (vlc 1.20 vlm 0.61 lm 1.40) lr 2.1e-04 temp 0.070 ...`"""
    parts = [f"[{r['stage']} {r['step']}/{r['total_steps']} {r['modality']}]", f"loss {r['loss']:.3f}"]
    # the supervised warm-up's term only where a stage trains it
    shown = [k for k in ("loss_vlc", "loss_vlm", "loss_lm") if k in r] + (["loss_cls"] if r.get("loss_cls") else [])
    terms = " ".join(f"{k[5:]} {r[k]:.2f}" for k in shown)
    if terms:
        parts.append(f"({terms})")
    parts.append(f"lr {r['lr']:.1e}")
    if "temperature" in r:
        parts.append(f"temp {r['temperature']:.3f}")
    parts.append(f"{r['samples_per_s']:.1f} samples/s/worker")
    parts.append(f"data-wait {100 * r['data_wait_frac']:.0f}%")
    if "cls_accuracy" in r:
        parts.append(f"cls acc {100 * r['cls_accuracy']:.0f}%")
    if "queue_fill" in r:
        parts.append(f"queue {100 * r['queue_fill']:.0f}%")
    return " ".join(parts)


def is_eval(record: dict) -> bool:
    """An evaluation record (`kind: eval`), not a training step's: readers of step fields must skip these."""
    return record.get("kind") == "eval"


def step_records(records: Iterable[dict]) -> list[dict]:
    return [r for r in records if not is_eval(r)]


def eval_metrics(r: dict) -> list[tuple[str, str, float, float | None]]:
    """(source, metric, value, chance) of an evaluation record, in record order."""
    return [(m["source"], m["metric"], v, r.get(f"{k}_chance")) for k, v in r.items()
            if (m := EVAL_KEY.match(k)) and v is not None]


def eval_line(r: dict) -> str:
    """`[image 200/800] eval: image_text t→i R@1 31.2 (chance 3.1), i→t R@1 28.0 (chance 1.6) · image_label
    zero-shot top-1 62.5 (chance 25.0) · 1.3s`"""
    by_source: dict[str, list[str]] = {}
    for source, metric, value, chance in eval_metrics(r):
        text = f"{EVAL_NAMES[metric]} {value:.1f}" + (f" (chance {chance:.1f})" if chance is not None else "")
        by_source.setdefault(source, []).append(text)
    parts = [f"{source} {', '.join(texts)}" for source, texts in by_source.items()]
    if "eval_seconds" in r:
        parts.append(f"{r['eval_seconds']:.1f}s")
    return f"[{r['stage']} {r['step']}/{r['total_steps']}] eval: " + " · ".join(parts)


def _plot_eval(ax, evals: list[dict]) -> None:
    """One line per (source, metric) of the evaluation records; its chance level dotted, in the same colour."""
    series: dict[tuple[str, str], list] = {}
    for r in evals:
        for source, metric, value, chance in eval_metrics(r):
            series.setdefault((source, metric), []).append((r["step"], value, chance))
    for (source, metric), pts in series.items():
        steps, values, chances = zip(*pts)
        line, = ax.plot(steps, values, "o-", label=f"{source} {EVAL_NAMES[metric]}", linewidth=1, markersize=3)
        if all(c is not None for c in chances):
            ax.plot(steps, chances, ":", color=line.get_color(), linewidth=1)
    ax.set_ylabel("% (dotted: chance)")


def plot_curves(records: Iterable[dict], out_png: str | Path, title: str) -> Path:
    """Draw the training curves of `records` (one stage) into a PNG grid; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    evals, records = [r for r in records if is_eval(r)], step_records(records)
    panels = PLOTTED + ([("eval during training (held-out, %)", [])] if evals else [])
    both = len({r.get("modality") for r in records}) > 1
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, (label, keys) in zip(axes.flat, panels):
        if not keys:
            _plot_eval(ax, evals)
        for key in keys:
            # losses and throughput differ by modality: one line each when the stage alternates
            groups = [("image", "-"), ("video", "--")] if both and key in PER_MODALITY else [(None, "-")]
            for modality, style in groups:
                pts = [(r["step"], r[key]) for r in records
                       if r.get(key) is not None and modality in (None, r.get("modality"))]
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{key} ({modality})" if modality else key, linewidth=1)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
