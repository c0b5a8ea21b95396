"""Evaluation outputs: `metrics.json` for machines, `report.md` (+ PNG figures) for people."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(metrics: dict, out_dir: Path) -> Path:
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return path


def markdown(metrics: dict, title: str) -> str:
    """Tables per source: every number next to its chance level."""
    lines = [f"# {title}", "", f"checkpoint: `{metrics.get('checkpoint', '?')}`", "",
             "Every number stands beside its chance level: what a model that ignores the picture or video scores "
             "(a random ranking, a uniform guess over the classes or answers, a caption of another item).", ""]
    for name, m in metrics.get("sources", {}).items():
        lines += [f"## {name} ({m['modality']}, {m['kind']}, {m['rows']} rows)", ""]
        lines += ["| metric | value | chance |", "|---|---|---|"]
        for key, (value, chance) in m.get("table", {}).items():
            lines.append(f"| {key} | {value:.1f} | {chance:.1f} |")
        if m.get("notes"):
            lines.append("")
        lines += [f"- {note}" for note in m.get("notes", [])]
        for fig in m.get("figures", []):
            lines += ["", f"![{name}]({fig})"]
        lines.append("")
    bad = metrics.get("bad_input")
    if bad:
        lines += ["## Bad input", "", "```", json.dumps(bad, indent=2), "```", ""]
    return "\n".join(lines)


def plot_recall_curve(rank_lists: dict[str, list[int]], num_gallery: int, out_png: Path, title: str) -> Path:
    """R@K for K = 1..num_gallery, one line per direction, with the chance diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ks = np.arange(1, num_gallery + 1)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, ranks in rank_lists.items():
        r = np.asarray(ranks)
        ax.plot(ks, [(r <= k).mean() * 100 for k in ks], label=label)
    ax.plot(ks, ks / num_gallery * 100, "k:", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("R@K (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def plot_confusion(matrix, classes: list[str], out_png: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(classes), 1 + 0.5 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(matrix[i][j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def plot_sample_sheet(samples: list[dict], out_png: Path, title: str) -> Path:
    """One row per sample: its frame (uint8 HWC) and, beside it, the lines of text (e.g. question, generated
    answer, ground truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(samples), 1)
    fig, axes = plt.subplots(n, 2, figsize=(7.5, 1.4 * n), gridspec_kw={"width_ratios": [1, 4]}, squeeze=False)
    for ax_img, ax_txt in axes:
        ax_img.axis("off")
        ax_txt.axis("off")
    for (ax_img, ax_txt), s in zip(axes, samples):
        ax_img.imshow(s["frame"])
        text = "\n".join(s["lines"]).encode("ascii", "replace").decode()  # the bundled font lacks most scripts
        ax_txt.text(0, 0.5, text, va="center", ha="left", fontsize=8, family="monospace",
                    wrap=True)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png