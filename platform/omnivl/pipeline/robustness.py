"""The robustness table: one pipeline spec (the demo's) run unchanged on several synthetic corpus variants and
seeds, its held-out figures side by side, each beside its chance level and the bar it must clear.

`omnivl bench robustness` runs the spec once per (variant, seed) with `omnivl run` (each run its own embedded Ray,
or `--address`), changing only the corpus variant and the seeds, then reads the evaluate step's and the fine-tune
step's `metrics.json` (`table` entries are `[value, chance]`) and writes `robustness.md` and `robustness.json`.

The bars are issue 18's acceptance: zero-shot direction and shape >= 2x chance, direction probe >= 80 %, linear
probes >= 2.5x chance, text->video and text->image R@1 >= 5x chance, video captioning BLEU-4 and CIDEr above
their chance (another item's reference caption). Figures without a bar (the speed probe, image captioning, QA by
type) are shown for reading, not judged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEMO_VARIANT = "demo"
# The demo spec pins the demo corpus's look (64 px, 16 frames at 8 fps); other variants take their own preset.
PINNED_CORPUS_KNOBS = ("image_size", "video_frames", "fps")
EVALUATE, FINETUNE = "evaluate", "finetune"


@dataclass(frozen=True)
class Metric:
    """A figure of the table: `source`'s `key` in the `step` step's metrics.json. Bar: value >= `times_chance` x
    chance, or >= `at_least` (percent), or > chance (`above_chance`); no bar when none is set."""

    name: str
    step: str
    source: str
    key: str
    times_chance: float | None = None
    at_least: float | None = None
    above_chance: bool = False

    def bar(self) -> str:
        if self.times_chance:
            return f">= {self.times_chance:g}x chance"
        if self.at_least is not None:
            return f">= {self.at_least:g}"
        return "> chance" if self.above_chance else ""

    def passes(self, value: float, chance: float) -> bool | None:
        if self.times_chance:
            return value >= self.times_chance * chance
        if self.at_least is not None:
            return value >= self.at_least
        if self.above_chance:
            return value > chance
        return None


METRICS = (
    Metric("direction probe (true vs reversed caption)", EVALUATE, "video_text",
           "direction probe: full caption, true vs reversed (%)", at_least=80.0),
    Metric("zero-shot direction top-1", EVALUATE, "video_label", "zero-shot top1", times_chance=2.0),
    Metric("zero-shot shape top-1", EVALUATE, "image_label", "zero-shot top1", times_chance=2.0),
    Metric("linear probe direction", EVALUATE, "video_label", "linear probe top1", times_chance=2.5),
    Metric("linear probe shape", EVALUATE, "image_label", "linear probe top1", times_chance=2.5),
    Metric("text->video R@1", EVALUATE, "video_text", "text->video R@1", times_chance=5.0),
    Metric("text->image R@1", EVALUATE, "image_text", "text->image R@1", times_chance=5.0),
    Metric("video captioning BLEU-4", EVALUATE, "video_text", "captioning BLEU-4 (x100)", above_chance=True),
    Metric("video captioning CIDEr", EVALUATE, "video_text", "captioning CIDEr (x100)", above_chance=True),
    Metric("speed probe (true vs contrary speed word)", EVALUATE, "video_text",
           "speed probe: full caption, true vs contrary speed (%)"),
    Metric("image captioning BLEU-4", EVALUATE, "image_text", "captioning BLEU-4 (x100)"),
    Metric("image captioning CIDEr", EVALUATE, "image_text", "captioning CIDEr (x100)"),
)
QA_SOURCES = {"image_qa_test": "image QA", "video_qa_test": "video QA"}  # the fine-tune step's evaluation
QA_PREFIX, QA_SUFFIX = "QA ", " exact match (%)"


def run_overrides(spec_steps: list[tuple[str, str]], variant: str, seed: int, output_root: str) -> list[str]:
    """`--set` values that run the pipeline on `variant` with every seed set to `seed`; `spec_steps` is the
    pipeline's (step name, job kind) in order."""
    sets = [f"output_root={output_root}"]
    for i, (_, kind) in enumerate(spec_steps):
        if kind == "synth":
            sets += [f"steps[{i}].job.corpus.variant={variant}", f"steps[{i}].job.corpus.seed={seed}"]
            if variant != DEMO_VARIANT:
                sets += [f"steps[{i}].job.corpus.{k}=null" for k in PINNED_CORPUS_KNOBS]
        elif kind in ("pretrain", "finetune"):
            sets.append(f"steps[{i}].job.seed={seed}")
    return sets


def read_figures(run_root: Path) -> dict[str, tuple[float, float]]:
    """{metric name: (value, chance)} of one finished pipeline run (its `latest/` step links); a metric whose
    source is missing is left out."""
    out: dict[str, tuple[float, float]] = {}
    evaluate = _sources(run_root / "latest" / EVALUATE / "metrics.json")
    for m in METRICS:
        entry = evaluate.get(m.source, {}).get("table", {}).get(m.key)
        if entry is not None:
            out[m.name] = (float(entry[0]), float(entry[1]))
    finetuned = _sources(run_root / "latest" / FINETUNE / "eval" / "metrics.json")
    for source, label in QA_SOURCES.items():
        for key, (value, chance) in sorted(finetuned.get(source, {}).get("table", {}).items()):
            if key.startswith(QA_PREFIX) and key.endswith(QA_SUFFIX):
                kind = key[len(QA_PREFIX):-len(QA_SUFFIX)] or "all"
                out[f"{label} {kind} (fine-tuned)"] = (float(value), float(chance))
    return out


def _sources(path: Path) -> dict:
    return json.loads(path.read_text())["sources"] if path.exists() else {}


def verdicts(figures: dict[str, tuple[float, float]]) -> dict[str, bool]:
    """{metric name: passes its bar} for the metrics with a bar; a barred metric missing from `figures` fails."""
    out = {}
    for m in METRICS:
        if m.bar():
            out[m.name] = m.name in figures and bool(m.passes(*figures[m.name]))
    return out


def markdown(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    """The table: a row per metric, a column per run ('value (chance)', a cross where the bar is missed)."""
    runs = list(results)
    by_name = {m.name: m for m in METRICS}
    names = list(by_name) + sorted({n for r in results.values() for n in r} - set(by_name))
    lines = ["| metric | bar | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for name in names:
        cells = []
        for run in runs:
            if name not in results[run]:
                cells.append("-")
                continue
            value, chance = results[run][name]
            ok = by_name[name].passes(value, chance) if name in by_name else None
            cells.append(f"{value:.1f} ({chance:.1f})" + (" ✗" if ok is False else ""))
        bar = by_name[name].bar() if name in by_name else ""
        lines.append(f"| {name} | {bar} | " + " | ".join(cells) + " |")
    passed = {run: verdicts(results[run]) for run in runs}
    lines.append("| **bars cleared** | | " + " | ".join(f"{sum(v.values())}/{len(v)}" for v in passed.values()) + " |")
    return "\n".join(lines) + "\n"


def run_table(spec: str, variants: list[str], seeds: list[int], out: Path, address: str | None = None,
              say=print) -> dict[str, dict[str, tuple[float, float]]]:
    """Run `spec` per (variant, seed) under `out/<variant>-s<seed>` (finished steps are reused), then write
    `out/robustness.md` and `out/robustness.json`. Returns {run name: figures}."""
    from omnivl.data.config import SYNTH_VARIANTS
    from omnivl.spec import PipelineJob, load_spec

    unknown = [v for v in variants if v not in SYNTH_VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; known: {', '.join(SYNTH_VARIANTS)}")
    job = load_spec(spec)
    if not isinstance(job, PipelineJob):
        raise ValueError(f"{spec}: the robustness table runs a pipeline spec (kind: pipeline), not {job.kind!r}")
    steps = [(s.name, s.job["kind"]) for s in job.steps]
    if not any(kind == "synth" for _, kind in steps):
        raise ValueError(f"{spec}: the pipeline has no synth step, so there is no corpus variant to change")
    results = {}
    for variant in variants:
        for seed in seeds:
            name = f"{variant}-s{seed}"
            cmd = [sys.executable, "-m", "omnivl", "run", spec]
            for value in run_overrides(steps, variant, seed, str(out / name)):
                cmd += ["--set", value]
            if address:
                cmd += ["--address", address]
            say(f"robustness: {name}: {' '.join(cmd[2:])}")
            done = subprocess.run(cmd, check=False)
            if done.returncode:
                say(f"robustness: {name} failed (exit {done.returncode}); its figures are left out")
            results[name] = read_figures(out / name)
            (out / "robustness.json").write_text(json.dumps(results, indent=2))
            (out / "robustness.md").write_text(markdown(results))
    return results
