"""Training metrics: a JSONL file per run, one-line progress, and PNG curves at the end of each stage."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

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


class MetricsFile:
    """Appends one JSON object per logged step to a local file (the run directory's `metrics.jsonl`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def records(self) -> list[dict]:
        return read_records(self.path)


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


def plot_curves(records: Iterable[dict], out_png: str | Path, title: str) -> Path:
    """Draw the training curves of `records` (one stage) into a PNG grid; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    both = len({r.get("modality") for r in records}) > 1
    cols = 3
    rows = math.ceil(len(PLOTTED) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, (label, keys) in zip(axes.flat, PLOTTED):
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
    for ax in list(axes.flat)[len(PLOTTED):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
