"""`omnivl data synth|inspect|import` and `omnivl bench data`: thin wrappers over omnivl.data and the data bench."""

from __future__ import annotations

import json
import sys


def register(groups) -> None:
    _synth(groups["data"])
    _inspect(groups["data"])
    _import(groups["data"])
    _bench(groups["bench"])


def _synth(sub) -> None:
    from omnivl.data.config import SYNTH_VARIANTS

    p = sub.add_parser("synth", help="generate the synthetic corpus (images, H.264 videos, manifests, splits)")
    p.add_argument("--out", required=True, help="output directory (local or s3://); replaced if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", choices=list(SYNTH_VARIANTS), default=None,
                   help="preset of frame size, object scale, motion, clips, textures and wordings (docs/data.md)")
    for name in ("image-text", "image-label", "video-text", "video-label", "image-qa", "video-qa", "image-size",
                 "video-frames", "fps"):
        p.add_argument(f"--{name}", type=int, default=None, help="override the default or the variant's")
    p.set_defaults(func=run_synth)


GUESS_ROWS = 1000


def _guess_kind(rows) -> str:
    if any(r.question for r in rows):
        return "qa"
    return "label" if rows and not any(r.text for r in rows) and any(r.label for r in rows) else "text"


def run_synth(args) -> int:
    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import generate

    overrides = {k: v for k, v in vars(args).items()
                 if k in SynthConfig.model_fields and v is not None}
    summary = generate(SynthConfig(**overrides), args.out)
    for d, info in summary["datasets"].items():
        print(f"{d:12} " + " ".join(f"{s}={n}" for s, n in info["splits"].items()))
    print(f"wrote {args.out} in {summary['seconds']}s")
    return 0


def _inspect(sub) -> None:
    p = sub.add_parser("inspect", help="row counts, a PNG contact sheet and the bad-file report of a source")
    p.add_argument("source", help="manifest (JSONL/CSV/Parquet, or .tar shards / glob), local or s3://")
    p.add_argument("--modality", choices=["image", "video"], default=None, help="default: from the file extensions")
    p.add_argument("--kind", choices=["text", "label", "qa"], default=None,
                   help="default: qa if rows have questions, else label if rows have no text")
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "csv", "parquet", "webdataset"])
    p.add_argument("--out", default="contact_sheet.png", help="PNG contact sheet path")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="decode at most this many rows (default: all)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--max-bad-fraction", type=float, default=0.01)
    p.set_defaults(func=run_inspect)


def run_inspect(args) -> int:
    from omnivl.data.config import DecodeConfig, SourceConfig
    from omnivl.data.inspect import guess_modality, inspect
    from omnivl.data.manifest import read_manifest

    probe = SourceConfig(name="inspect", manifest=args.source, format=args.format, modality="image")
    rows = read_manifest(probe, limit=GUESS_ROWS)  # a sample is enough to guess modality and kind
    modality = args.modality or guess_modality(rows)
    kind = args.kind or _guess_kind(rows)
    source = probe.model_copy(update={"modality": modality, "kind": kind})
    decode = DecodeConfig(image_size=args.image_size, num_frames=args.frames, max_bad_fraction=args.max_bad_fraction)
    summary = inspect(source, decode, args.out, args.samples, args.limit)
    print(json.dumps(summary, indent=2))
    bad = summary["bad_inputs"]
    print(f"{summary['rows']} rows ({modality}, {kind}); decoded {summary['decoded']} of {summary['checked']} checked; "
          f"skipped {bad['rows_skipped']} ({bad['skipped_fraction']:.1%}); contact sheet: {summary['contact_sheet']}")
    return 1 if bad["skipped_fraction"] > args.max_bad_fraction else 0


def _import(sub) -> None:
    from omnivl.data.importers import IMPORTERS, VQA_IMAGE_PATTERN

    p = sub.add_parser("import", help="convert a dataset's annotation files (COCO, Karpathy, MSR-VTT, WebVid, "
                                      "Kinetics, image folder, VQA) into a Parquet manifest")
    p.add_argument("format", choices=sorted(IMPORTERS))
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="annotation files (imagefolder: root directories; vqa: questions and annotations JSON)")
    p.add_argument("--out", required=True, help="manifest to write (.parquet, local or s3://)")
    p.add_argument("--media-root", default=None, help="where the media files are (default: the first SRC's directory)")
    p.add_argument("--split", default=None, help="keep only rows of this split (formats that state splits)")
    p.add_argument("--drop-missing", action="store_true",
                   help="leave out rows whose media file is missing (default: keep them; both report them)")
    p.add_argument("--image-pattern", default=None, help=f"vqa: image file name (default {VQA_IMAGE_PATTERN!r})")
    p.add_argument("--subset", default=None,
                   help="vqa: {subset} of the pattern if the questions JSON has no data_subtype")
    p.set_defaults(func=run_import)


def run_import(args) -> int:
    from omnivl.data.importers import import_dataset

    try:
        s = import_dataset(args.format, args.sources, args.out, media_root=args.media_root, split=args.split,
                           drop_missing=args.drop_missing, image_pattern=args.image_pattern, subset=args.subset)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {s.rows} rows to {s.manifest} (" + " ".join(f"{k}={n}" for k, n in sorted(s.splits.items())) + ")")
    if s.missing:
        fate = "left out (--drop-missing)" if s.dropped else "kept: decoding counts them as missing_file"
        print(f"missing media: {s.missing} rows, {fate}; first ones:")
        print("\n".join(f"  {uri}" for uri in s.missing_examples))
    print(f"source config: manifest: {s.manifest}, modality: {s.modality}, kind: {s.kind}")
    return 0


def _bench(sub) -> None:
    from omnivl.cluster.data_bench import BenchConfig
    from omnivl.cluster.embed_bench import EmbedBenchConfig
    from omnivl.cluster.manifest_bench import ManifestBenchConfig

    _bench_command(sub, "data", "decode throughput per core: Ray Data vs plain loop vs torch DataLoader",
                   BenchConfig, "omnivl.cluster.data_bench")
    _bench_command(sub, "manifest", "time to first batch and driver peak RSS of a training stream, by manifest "
                   "size (Parquet rows over a few real JPEGs)", ManifestBenchConfig, "omnivl.cluster.manifest_bench")
    _bench_command(sub, "embed", "kind: embed vs a bare single-process loop (rows per CPU-second), 1 and 2 actors, "
                   "by manifest size", EmbedBenchConfig, "omnivl.cluster.embed_bench")


def _bench_command(sub, name: str, help_text: str, config_type, module: str) -> None:
    """`omnivl bench NAME`: one flag per field of the benchmark's config dataclass, then `module.run(cfg)`."""
    p = sub.add_parser(name, help=help_text)
    for field, value in vars(config_type()).items():
        p.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.set_defaults(func=lambda args: run_bench(args, config_type, module))


def run_bench(args, config_type, module: str) -> int:
    import importlib
    from dataclasses import fields

    cfg = config_type(**{f.name: getattr(args, f.name) for f in fields(config_type)})
    report = importlib.import_module(module).run(cfg)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
