"""Benchmarks that fan out: `--jobs N` re-runs the same command as N worker processes (`--worker i/N`).

Each benchmark script owns which runs a worker takes; this module only starts the workers with the
caller's own command line (minus `--jobs`) and waits for them, so a killed or failed worker leaves
the finished runs in place and the same command continues.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def strip_jobs(argv: Sequence[str]) -> list[str]:
    """The command line without `--jobs N` (and `--jobs=N`), for the worker processes."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--jobs":
            skip = True
        elif not a.startswith("--jobs="):
            out.append(a)
    return out


def run_workers(script: str | Path, argv: Sequence[str] | None, jobs: int, env: Mapping[str, str] | None = None) -> bool:
    """Run `script` with `argv` (default: this process's arguments) as `jobs` workers; True when all succeeded."""
    base = [sys.executable, str(Path(script).resolve()), *strip_jobs(argv if argv is not None else sys.argv[1:])]
    procs = [subprocess.Popen([*base, "--worker", f"{i}/{jobs}"], env=None if env is None else dict(env))
             for i in range(jobs)]
    codes = [proc.wait() for proc in procs]
    if any(codes):
        print(f"a worker failed (exit codes {codes}); rerun the same command to continue")
        return False
    return True
