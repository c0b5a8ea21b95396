"""Hugging Face hub ids resolved offline, through the local Hugging Face cache.

Training and serving machines have no internet, so a hub id in a spec (`bert-base-uncased`, `org/name`) names a
snapshot that must already be in the cache: `$HF_HOME/hub/models--<org>--<name>/snapshots/<rev>/`, with
`refs/main` naming `<rev>` (the layout `hf download` writes). Nothing is downloaded here.
"""

from __future__ import annotations

import os
from pathlib import Path


def hub_cache_dir() -> Path:
    """The hub cache the environment names now: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    `~/.cache/huggingface/hub` (huggingface_hub's own precedence). Read at call time, not at import like
    `huggingface_hub.constants`, so the environment of the process doing the load is the one that counts."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    default_home = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(os.environ.get("HF_HOME", str(default_home)))).expanduser() / "hub"


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a hub model id: not an existing local path, not a URI, and `name` or `org/name`
    in the hub's own syntax. An existing local directory of the same name wins."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if "://" in name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def cached_snapshot(repo_id: str, field: str) -> Path:
    """The cached snapshot directory of hub model `repo_id` (its `main` revision), found without the network.

    Raises FileNotFoundError naming `field` (the spec field that holds the id), the id, the directory where
    the snapshot was expected and how to put it there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
        raise FileNotFoundError(
            f"{field}: {repo_id!r} is not a local directory, so it is read as a Hugging Face hub id, and the "
            f"local Hugging Face cache does not hold it: expected {repo_dir}/snapshots/<revision>/ with "
            f"{repo_dir}/refs/main naming the revision (cache {cache}, from HF_HUB_CACHE or HF_HOME). Nothing "
            f"is downloaded at run time: on a machine with internet run `hf download {repo_id}` (older clients: "
            f"`huggingface-cli download {repo_id}`) and copy its {repo_dir.name} directory into {cache} on "
            f"every node, point HF_HOME at a cache that holds it, or give a local or s3:// directory instead."
        ) from None


def resolve_hf_dir(name: str, field: str) -> str:
    """`name` itself (a local path or a URI) unless it is a hub id (`is_hub_id`), then the path of its
    cached snapshot. Raises FileNotFoundError (see `cached_snapshot`) for a hub id that is not cached."""
    return str(cached_snapshot(name, field)) if is_hub_id(name) else name
