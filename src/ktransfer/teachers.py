"""Teachers trained once and reused: an ordinary run whose directory lives in the cache, keyed by its config.

A text teacher (say MiniLM fine-tuned on BBC News) costs far more than the students distilled
from it, and every run on that task must use the same one. `prepare_teacher(config)` trains
the run `config` describes into a cache entry named by a hash of the resolved config (data and
its settings, model, training settings), the content of every file or folder the config names
(a user's CSV edited in place gives another teacher), the source code of the data package (which
decides the splits), the ktransfer version and the pretrained package's version; the run is trained in a temporary folder and renamed into place, so an entry is
complete or absent. The model builder `cached_teacher` loads it, and refuses with the command
to run when it has not been trained: building a model never trains one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
from pathlib import Path

from torch import nn

from ktransfer.cache import cache_root, cached_entry
from ktransfer.fingerprint import source_digest


def teacher_key(config: str | Path) -> str:
    """The cache entry of the run `config` describes: `teacher-<data name>-<hash>`."""
    from ktransfer import __version__
    from ktransfer.config import RunConfig
    from ktransfer.data.text import MINILM

    cfg = RunConfig.from_yaml(config)
    described = {"config": cfg.to_yaml(), "inputs": cfg.input_digests(), "version": __version__,
                 "pretrained": MINILM.key, "data_code": _data_code_digest()}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return f"teacher-{cfg.data['name']}-{digest}"


def _data_code_digest() -> str:
    """The source of every module of `ktransfer.data`: the code that reads and splits a teacher's data."""
    import ktransfer.data as data_package

    modules = [importlib.import_module(f"ktransfer.data.{m.name}") for m in pkgutil.iter_modules(data_package.__path__)]
    return source_digest([data_package, *modules])


def prepare_teacher(config: str | Path, progress: bool = False) -> Path:
    """Train the run `config` describes into the cache once; its run directory (usable as `from_run`)."""
    from ktransfer.config import RunConfig
    from ktransfer.runner import run

    cfg = RunConfig.from_yaml(config)

    def train(tmp: Path) -> None:
        run(cfg, tmp, progress=progress)

    return cached_entry(teacher_key(config), train)


def cached_teacher_dir(config: str | Path) -> Path:
    """The trained run of `config` in the cache, or an error naming the command that trains it."""
    path = cache_root() / teacher_key(config)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"the teacher of {config} is not trained yet (looked for {path}); run "
            f"`ktransfer data prepare teacher --config {config}`"
        )
    return path


def load_cached_teacher(config: str | Path, num_classes: int, which: str = "best") -> nn.Module:
    """The student model of the cached run of `config`, with its `which` (best or final) weights."""
    from ktransfer.runner import build_model

    return build_model({"from_run": str(cached_teacher_dir(config)), "which": which}, {"num_classes": num_classes},
                       "teacher.cached")
