"""A local folder laid out as the Hugging Face hub client lays out its cache, and an offline hub to read it from.

`HF_HUB_CACHE/models--org--name/refs/main` holds a commit; `snapshots/<commit>/` holds the files
(plain copies: the client's symlinks to `blobs/` are optional). The hub client reads its settings
when imported, so `offline_hub` sets both the environment and the client's constants.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest


def lay_out(folder: Path, cache: Path, repo_id: str, repo_type: str = "model", branch: str = "main",
            link: bool = False) -> str:
    """Copy (or, with `link`, symlink) `folder`'s files into `cache` as the snapshot of `repo_id` at `branch`;
    the commit it is filed under (a digest of the files; large ones by size and time)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for file in files:
        st = file.stat()
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() if st.st_size < 1 << 22 else f"{st.st_size}:{st.st_mtime_ns}".encode())
    commit = digest.hexdigest()
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    for file in files:
        target = repo / "snapshots" / commit / file.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        if link:
            target.symlink_to(file.resolve())
        else:
            shutil.copyfile(file, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return commit


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache folder, with downloads off (HF_HUB_OFFLINE=1); hub ids resolve from it only."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.setenv(key, str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    try:
        import datasets.config as dconfig
    except ImportError:
        return cache
    monkeypatch.setattr(dconfig, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(dconfig, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(dconfig, "HF_HUB_CACHE", str(cache), raising=False)
    return cache
