"""Claim-based work queue and worker processes: several processes take the units of one benchmark, each unit
once, a unit only once the units it needs are done.

`--jobs N` re-runs the same command as N worker processes (`--worker i/N`), each calling `work_queue` on the
same claims folder; a killed or failed worker leaves the finished units in place and the same command
continues. A claim is a file holding its owner's process id; a claim whose owner died is taken over.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.provenance import COMMAND_ENV, invoked_command


@dataclass
class WorkUnit:
    """One piece of work: done when `done()` says so (its result file exists), ready when every unit named in
    `needs` is done."""

    name: str
    run: Callable[[], object]
    done: Callable[[], bool]
    needs: Sequence[str] = field(default_factory=tuple)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(claims: Path, name: str) -> bool:
    """Take `name` for this process, atomically; a claim left by a process that died is taken over."""
    path = claims / f"{name}.claim"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(path.read_text() or "0")
            except (OSError, ValueError):
                return False  # being written by its owner this instant
            if owner and not _alive(owner):
                path.unlink(missing_ok=True)
                continue
            return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def work_queue(units: Sequence[WorkUnit], claims: str | Path, poll_s: float = 2.0) -> int:
    """Run, in order of `units`, every unit not done whose needs are done and that no other live worker
    has claimed; wait while the rest wait on other workers. Returns the number of units run here.

    Several processes may call this on the same `claims` folder at once: each unit runs once. Claims
    of finished units are removed; a unit that raises leaves its claim removed and re-raises.
    """
    claims = Path(claims)
    claims.mkdir(parents=True, exist_ok=True)
    by_name = {u.name: u for u in units}
    if len(by_name) != len(units):
        raise ValueError(f"unit names repeat: {sorted(n for n in by_name if sum(u.name == n for u in units) > 1)}")
    unknown = sorted({n for u in units for n in u.needs} - set(by_name))
    if unknown:
        raise ValueError(f"units need unknown units: {unknown}")
    ran = 0
    while True:
        pending = [u for u in units if not u.done()]
        if not pending:
            return ran
        ready = [u for u in pending if all(by_name[n].done() for n in u.needs)]
        taken = next((u for u in ready if claim(claims, u.name)), None)
        if taken is None:
            time.sleep(poll_s)
            continue
        try:
            if not taken.done():  # finished by another worker between the listing and the claim
                taken.run()
                ran += 1
                if not taken.done():
                    raise RuntimeError(f"unit {taken.name} ran but does not report itself done")
        finally:
            (claims / f"{taken.name}.claim").unlink(missing_ok=True)


def clear_claims(claims: str | Path) -> None:
    """Remove every claim of `claims`: a new invocation starts, no worker of an old one lives."""
    for stale in Path(claims).glob("*.claim"):
        stale.unlink(missing_ok=True)


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
    args = list(argv if argv is not None else sys.argv[1:])
    base = [sys.executable, str(Path(script).resolve()), *strip_jobs(args)]
    # the workers' results name the command the user ran, not each worker's own command line
    command = os.environ.get(COMMAND_ENV) or invoked_command([str(script), *args])
    child_env = {**(os.environ if env is None else env), COMMAND_ENV: command}
    procs = [subprocess.Popen([*base, "--worker", f"{i}/{jobs}"], env=child_env) for i in range(jobs)]
    codes = [proc.wait() for proc in procs]
    if any(codes):
        print(f"a worker failed (exit codes {codes}); rerun the same command to continue")
        return False
    return True
