"""A local Hugging Face hub cache made on the spot (nothing is downloaded): what `omnivl.hf_cache` reads."""

from __future__ import annotations

import shutil
from pathlib import Path

REVISION = "0" * 39 + "1"  # any name works; real caches use the commit hash


def use_hf_home(monkeypatch, home: Path) -> Path:
    """Point this test's environment at the Hugging Face home `home`; returns its hub cache, `home/hub`."""
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return home / "hub"


def cache_snapshot(hub: Path, repo_id: str, source: Path | dict[str, str]) -> Path:
    """Lay out `source` (a directory's files, or {file name: text}) as the `main` snapshot of hub model
    `repo_id` in the hub cache `hub`, the layout `hf download` writes (it links snapshot files to blobs/;
    plain copies read the same). Returns the snapshot directory."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    if isinstance(source, dict):
        for name, text in source.items():
            (snapshot / name).write_text(text)
    else:
        for f in Path(source).iterdir():
            shutil.copyfile(f, snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot
