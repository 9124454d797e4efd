"""Teachers trained once and reused: an ordinary run whose directory lives in the cache, keyed by its config.

A text teacher (say MiniLM fine-tuned on BBC News) costs far more than the students distilled
from it, and every run on that task must use the same one. `prepare_teacher(config)` trains
the run `config` describes into a cache entry named by `teacher_key(config)` (see
`ktransfer.building`, which also loads it for the `cached_teacher` model builder); the run is
trained in a temporary folder and renamed into place, so an entry is complete or absent.
"""

from __future__ import annotations

from pathlib import Path

from ktransfer.building import cached_teacher_dir, load_cached_teacher, teacher_key
from ktransfer.cache import cached_entry
from ktransfer.config import RunConfig
from ktransfer.runner import run

__all__ = ["cached_teacher_dir", "load_cached_teacher", "prepare_teacher", "teacher_key"]


def prepare_teacher(config: str | Path, progress: bool = False) -> Path:
    """Train the run `config` describes into the cache once; its run directory (usable as `from_run`)."""
    cfg = RunConfig.from_yaml(config)

    def train(tmp: Path) -> None:
        run(cfg, tmp, progress=progress)

    return cached_entry(teacher_key(config), train)
