"""Where a result comes from: the code (git commit, and whether the tree had uncommitted changes), the
command and the machine. `ktransfer demo` records it in its results; the benchmarks record it too."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ktransfer.environment import environment, package_version


def command_line(argv: Sequence[str] | None = None, root: str | Path | None = None) -> str:
    """The command line `argv` (default: this process's) as a user would type it: `python SCRIPT ARGS`, the script
    relative to `root` (default: the working directory) when inside it, arguments shell-quoted."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "python"
    script, *rest = argv
    base = Path(root) if root is not None else Path.cwd()
    try:
        script = str(Path(script).resolve().relative_to(base.resolve()))
    except ValueError:
        pass
    return shlex.join(["python", script, *rest])


RESULTS_DIR = "benchmarks/results"


def git_state(root: str | Path) -> dict[str, Any]:
    """`{"commit": full hash of HEAD, "dirty": True when tracked or untracked files differ from it}` of the git
    checkout at `root`; both None outside a checkout or without git (a COMMIT file at `root`, written into a
    snapshot copied outside the repository, then gives the commit). Files under `RESULTS_DIR` are results, not
    code: a benchmark writing its unit results there does not make the units after them dirty."""
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
    status = git("status", "--porcelain", "--", ".", f":(exclude){RESULTS_DIR}")
    return {"commit": head.strip(), "dirty": None if status is None else bool(status.strip())}


def provenance(root: str | Path, argv: Sequence[str] | None = None, command: str | None = None) -> dict[str, Any]:
    """The code (`git_state` of `root`), the command (`command`, else `command_line(argv, root)`) and the machine
    (`ktransfer.environment.environment`) behind a result made now."""
    return {**git_state(root), "command": command if command is not None else command_line(argv, root),
            "machine": environment()}


def library_provenance(command: str) -> dict[str, Any]:
    """`provenance` of a result made by the installed ktransfer itself (e.g. `ktransfer demo`): the commit of the
    source checkout it runs from (src/ktransfer inside a git work tree, as in an editable install), None for an
    install from a wheel, whose files belong to no checkout; plus the package version."""
    package = Path(__file__).resolve().parent
    root = package.parents[1]
    in_checkout = package == (root / "src" / "ktransfer").resolve() and (root / "pyproject.toml").is_file()
    if in_checkout:
        record = provenance(root, command=command)
    else:
        record = {"commit": None, "dirty": None, "command": command, "machine": environment()}
    record["version"] = package_version("ktransfer")
    return record
