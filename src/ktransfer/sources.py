"""Where a model or dataset comes from: a local path, or a Hugging Face hub id read from the local cache.

A config names a pretrained model or a dataset the way `from_pretrained` and `load_dataset` take
it: a local folder or file (relative to the config file), or a hub id (`org/name` or `name`). A
value that exists on this machine is a path; any other value shaped like a hub id is an id. The
hub client keeps what it downloads in `HF_HUB_CACHE` (`models--org--name/refs/<branch>` holding a
commit, `snapshots/<commit>/<files>`); with `HF_HUB_OFFLINE=1` nothing is downloaded and an id
must already be there. The content key of an id is its snapshot's commit, so a cache entry made
from `org/name` changes when the revision it names moves to another commit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

RepoType = Literal["model", "dataset"]
_COMMIT = re.compile(r"[0-9a-f]{40}")
# `org/name` or `name`: letters, digits, '-', '_', '.', not starting or ending with '-' or '.' (the hub's rule)
_REPO_ID = re.compile(r"(?:[\w][\w.\-]{0,94}[\w]/|[\w]/)?(?:[\w][\w.\-]{0,94}[\w]|[\w])")


# `load_dataset` builders that read local files (given by `data_files`), not hub repositories.
PACKAGED = ("json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "xml", "sql")
# Models ktransfer prepares from packages (`ktransfer data prepare`), named in place of a hub id or folder.
PREPARED_MODELS = ("smollm2",)


class HubSourceError(OSError):
    """A hub id that cannot be read: not cached while offline, or not found on the hub."""


def is_hub_id(value: str) -> bool:
    """Whether `value` is shaped like a hub id (`org/name` or `name`) rather than a path."""
    return bool(_REPO_ID.fullmatch(value)) and ".." not in value


def resolve_source(value: str, base: Path) -> str:
    """`value` as a config names it, resolved against `base` (the config file's folder).

    An existing local path (or one written as a path: absolute, `~`, `./`, more than one `/`) becomes
    absolute; anything else that looks like a hub id stays as it is.
    """
    if not value:
        return value
    expanded = os.path.expanduser(value)
    local = os.path.abspath(base / expanded)
    if os.path.exists(local) or not is_hub_id(value):
        return local
    return value


def hub_cache_dir() -> Path:
    """The hub client's cache folder (`HF_HUB_CACHE`, default `~/.cache/huggingface/hub`)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether downloads are off (`HF_HUB_OFFLINE=1`)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def repo_cache_folder(repo_id: str, repo_type: RepoType = "model") -> Path:
    """The cache folder of one repository: `<HF_HUB_CACHE>/models--org--name` (or `datasets--...`)."""
    return hub_cache_dir() / f"{repo_type}s--{repo_id.replace('/', '--')}"


def cached_revisions(repo_id: str, repo_type: RepoType = "model") -> list[str]:
    """The branches or tags (refs) and commits the local cache holds for `repo_id`."""
    folder = repo_cache_folder(repo_id, repo_type)
    refs = folder / "refs"
    names = sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []
    snapshots = sorted(p.name for p in (folder / "snapshots").iterdir()) if (folder / "snapshots").is_dir() else []
    return names + [s for s in snapshots if s not in names]


def cached_commit(repo_id: str, revision: str | None = None, repo_type: RepoType = "model") -> str | None:
    """The commit `revision` (default `main`) resolves to in the local cache, or None when it is not cached."""
    folder = repo_cache_folder(repo_id, repo_type)
    revision = revision or "main"
    if _COMMIT.fullmatch(revision):
        commit = revision
    else:
        ref = folder / "refs" / revision
        if not ref.is_file():
            return None
        commit = ref.read_text(encoding="utf-8").strip()
    return commit if (folder / "snapshots" / commit).is_dir() else None


def cached_snapshot(repo_id: str, revision: str | None = None, repo_type: RepoType = "model") -> Path | None:
    """The snapshot folder of `repo_id` at `revision` in the local cache, or None when it is not cached."""
    commit = cached_commit(repo_id, revision, repo_type)
    return repo_cache_folder(repo_id, repo_type) / "snapshots" / commit if commit else None


def not_cached_message(who: str, repo_id: str, revision: str | None = None, repo_type: RepoType = "model") -> str:
    """One line: `repo_id` is not in the local cache, and what to do about it."""
    at = f" at revision '{revision}'" if revision and revision != "main" else ""
    held = cached_revisions(repo_id, repo_type)
    cached = f" (the cache holds its revisions: {', '.join(held)})" if held else ""
    fetch = f"hf download {'--repo-type dataset ' if repo_type == 'dataset' else ''}{repo_id}"
    return (f"{who}: '{repo_id}'{at} is not in the local Hugging Face cache (HF_HUB_CACHE={hub_cache_dir()}){cached} "
            f"and HF_HUB_OFFLINE=1 forbids downloading it; download it once where the hub is reachable (`{fetch}`), "
            f"copy that cache folder here, or give a local folder (no local path '{repo_id}' exists either)")


def require_cached(who: str, repo_id: str, revision: str | None = None, repo_type: RepoType = "model") -> None:
    """Refuse, in one line, a hub id that is not cached while downloads are off; pass otherwise."""
    if hub_offline() and cached_commit(repo_id, revision, repo_type) is None:
        raise HubSourceError(not_cached_message(who, repo_id, revision, repo_type))


def hub_commit(repo_id: str, revision: str | None = None, repo_type: RepoType = "model") -> str:
    """The commit `repo_id` at `revision` names: from the local cache, else (online) asked of the hub."""
    commit = cached_commit(repo_id, revision, repo_type)
    if commit is not None:
        return commit
    require_cached("content key", repo_id, revision, repo_type)
    from huggingface_hub import HfApi

    try:
        sha = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type).sha
    except Exception as e:  # any failure of the hub client: network, missing repository, authentication
        raise HubSourceError(f"'{repo_id}' is not in the local Hugging Face cache (HF_HUB_CACHE={hub_cache_dir()}) "
                             f"and the hub did not answer for it: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                             ) from None
    if not sha:
        raise HubSourceError(f"the hub named no commit for '{repo_id}' at revision '{revision or 'main'}'")
    return sha


def source_key(value: str, revision: str | None = None, repo_type: RepoType = "model") -> str:
    """The content key of a source: the digest of a local file or folder, `hub:<type>:<id>@<commit>`, or for a
    `load_dataset` builder reading local files (`json`, `csv`, ...) its name (the files are keyed apart)."""
    from ktransfer.fingerprint import path_digest

    if repo_type == "dataset" and value in PACKAGED and not os.path.exists(value):
        return f"builder:{value}"
    if repo_type == "model" and value in PREPARED_MODELS and not os.path.exists(value):
        return f"prepared:{value}"
    if os.path.exists(value) or not is_hub_id(value):
        return path_digest(value)
    return f"hub:{repo_type}:{value}@{hub_commit(value, revision, repo_type)}"
