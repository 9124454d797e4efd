"""Benchmark support: fan-out workers, sittings, and the provenance every published result carries.

`--jobs N` re-runs the same command as N worker processes (`--worker i/N`). Each benchmark script
owns which runs a worker takes: a fixed share (every N-th run), or, when runs depend on each other
(students on a teacher), a shared queue (`work_queue`) from which every worker claims the next run
whose inputs are ready. This module starts the workers with the caller's own command line (minus
`--jobs`) and waits for them, so a killed or failed worker leaves the finished runs in place and
the same command continues.

`provenance` names the code (commit, and whether the tree had uncommitted changes), the command
and the machine behind a result; `commits_of` lists the commits an aggregate mixes.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class WorkUnit:
    """One run of a benchmark: done when `done()` says so (its result file exists), ready when every
    unit named in `needs` is done."""

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


def _claim(claims: Path, name: str) -> bool:
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
    unknown = sorted({n for u in units for n in u.needs} - set(by_name))
    if unknown:
        raise ValueError(f"units need unknown units: {unknown}")
    ran = 0
    while True:
        pending = [u for u in units if not u.done()]
        if not pending:
            return ran
        ready = [u for u in pending if all(by_name[n].done() for n in u.needs)]
        taken = next((u for u in ready if _claim(claims, u.name)), None)
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


def record_sitting(log: str | Path, minutes: float, command: str | None = None) -> None:
    """Append one invocation's wall time (and, if given, its command) to a benchmark's sittings log
    (one JSON line per sitting)."""
    entry: dict[str, object] = {"ended": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_time_min": minutes}
    if command is not None:
        entry["command"] = command
    with Path(log).open("a") as f:
        f.write(json.dumps(entry) + "\n")


def read_sittings(log: str | Path) -> list[dict[str, object]]:
    """Every sitting recorded in `log` (none when it does not exist); their minutes add up to the benchmark's time."""
    log = Path(log)
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


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


COMMAND_ENV = "KTRANSFER_BENCH_COMMAND"


def invoked_command(argv: Sequence[str] | None = None, root: str | Path | None = None) -> str:
    """The command line that started this process, as a user would type it: `python SCRIPT ARGS`, the script
    relative to `root` (default: the working directory) when inside it, arguments shell-quoted.

    In a worker started by `run_workers` (and with `argv` not given) it is the command of the invocation that
    started the workers."""
    if argv is None:
        if os.environ.get(COMMAND_ENV):
            return os.environ[COMMAND_ENV]
        argv = sys.argv
    if not argv:
        return "python"
    script, *rest = argv
    base = Path(root) if root is not None else Path.cwd()
    try:
        script = str(Path(script).resolve().relative_to(base.resolve()))
    except ValueError:
        pass
    return shlex.join(["python", script, *rest])


def git_state(root: str | Path) -> dict[str, Any]:
    """`{"commit": full hash of HEAD, "dirty": True when tracked or untracked files differ from it}` of the git
    checkout at `root`; both None outside a checkout or without git (a COMMIT file at `root`, written into a
    snapshot copied outside the repository, then gives the commit)."""
    root = Path(root)

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None

    head = git("rev-parse", "HEAD")
    if head is None:
        marker = root / "COMMIT"
        return {"commit": marker.read_text().strip() if marker.is_file() else None, "dirty": None}
    status = git("status", "--porcelain")
    return {"commit": head.strip(), "dirty": None if status is None else bool(status.strip())}


def provenance(root: str | Path, argv: Sequence[str] | None = None, command: str | None = None) -> dict[str, Any]:
    """Where a result comes from: the code (`git_state` of `root`), the command (`command`, else the command
    line of this process, see `invoked_command`) and the machine (`ktransfer.runner.environment`)."""
    from ktransfer.runner import environment

    return {**git_state(root), "command": command if command is not None else invoked_command(argv, root),
            "machine": environment()}


def commits_of(records: Sequence[Mapping[str, Any]]) -> list[str | None]:
    """The distinct commits behind `records` (each a result holding a `provenance` block), in first-seen order:
    `commit`, else `committed_in` (a result known only by the commit that added it); None for a record whose code
    is unknown."""
    out: list[str | None] = []
    for record in records:
        prov = record.get("provenance") or {}
        commit = prov.get("commit") or prov.get("committed_in")
        if commit not in out:
            out.append(commit)
    return out


def library_provenance(command: str) -> dict[str, Any]:
    """`provenance` of a result made by the installed ktransfer itself (e.g. `ktransfer demo`): the commit of the
    source checkout it runs from (src/ktransfer inside a git work tree, as in an editable install), None for an
    install from a wheel, whose files belong to no checkout; plus the package version."""
    from importlib.metadata import PackageNotFoundError, version

    package = Path(__file__).resolve().parent
    root = package.parents[1]
    in_checkout = package == (root / "src" / "ktransfer").resolve() and (root / "pyproject.toml").is_file()
    if in_checkout:
        record = provenance(root, command=command)
    else:
        from ktransfer.runner import environment

        record = {"commit": None, "dirty": None, "command": command, "machine": environment()}
    try:
        record["version"] = version("ktransfer")
    except PackageNotFoundError:
        record["version"] = None
    return record
