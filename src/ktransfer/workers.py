"""Deprecated: the provenance helpers live in `ktransfer.provenance`; the benchmarks' work queue, workers and
sittings log live in the benchmark harness (benchmarks/harness/), outside the library."""

from __future__ import annotations

import warnings
from typing import Any

from ktransfer.provenance import git_state, library_provenance, provenance

warnings.warn("ktransfer.workers is deprecated: import git_state, provenance and library_provenance from "
              "ktransfer.provenance", DeprecationWarning, stacklevel=2)

__all__ = ["git_state", "library_provenance", "provenance"]

_MOVED = {"WorkUnit": "queue", "work_queue": "queue", "run_workers": "queue", "strip_jobs": "queue",
          "record_sitting": "sittings", "read_sittings": "sittings", "invoked_command": "provenance",
          "COMMAND_ENV": "provenance", "commits_of": "provenance"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        raise AttributeError(f"ktransfer.workers.{name} is no longer part of the library: it is "
                             f"benchmarks/harness/{_MOVED[name]}.py (`from harness.{_MOVED[name]} import {name}` "
                             "with benchmarks/ on sys.path)")
    raise AttributeError(f"module 'ktransfer.workers' has no attribute {name!r}")
