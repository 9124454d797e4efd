"""The provenance block every benchmark result carries: which code, which command, which machine.

Every unit result and every aggregate a benchmark writes holds

    "provenance": {"commit": <git HEAD, full hash>, "dirty": <uncommitted changes in the tree>,
                   "command": <the command line that ran it>, "machine": <platform, CPUs, versions>}

and an aggregate also lists `"commits"`: every commit its units came from (they may span several
invocations). The code and machine parts are `ktransfer.provenance`; this module adds the command of a
`--jobs N` invocation, which its worker processes record instead of their own command lines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ktransfer.provenance import command_line
from ktransfer.provenance import provenance as code_command_machine

ROOT = Path(__file__).resolve().parents[2]
COMMAND_ENV = "KTRANSFER_BENCH_COMMAND"


def invoked_command(argv: Sequence[str] | None = None, root: str | Path | None = None) -> str:
    """The command line that started this process, as a user would type it (`ktransfer.provenance.command_line`).

    In a worker started by `queue.run_workers` (and with `argv` not given) it is the command of the invocation
    that started the workers."""
    if argv is None and os.environ.get(COMMAND_ENV):
        return os.environ[COMMAND_ENV]
    return command_line(argv, root)


def record(argv: Sequence[str] | None = None, command: str | None = None) -> dict[str, Any]:
    """The provenance block of a result made now, by this process, from the code of this repository."""
    return code_command_machine(ROOT, command=command if command is not None else invoked_command(argv, ROOT))


def commits_of(records: Sequence[Mapping[str, Any]]) -> list[str | None]:
    """The distinct commits behind `records` (each a result holding a `provenance` block), in first-seen order:
    `commit`, else `committed_in` (a result known only by the commit that added it); None for a record whose code
    is unknown."""
    out: list[str | None] = []
    for rec in records:
        prov = rec.get("provenance") or {}
        commit = prov.get("commit") or prov.get("committed_in")
        if commit not in out:
            out.append(commit)
    return out


def aggregate_record(units: Sequence[Mapping[str, Any]], argv: Sequence[str] | None = None,
                     command: str | None = None) -> dict[str, Any]:
    """The provenance block of an aggregate of `units`: its own (the aggregating code and command) plus
    `commits`, the commits of the units."""
    return {**record(argv, command), "commits": commits_of(units)}


def code_line(prov: Mapping[str, Any] | None) -> str:
    """One line for a results table saying which code made it: the commits of its runs (short hashes; `unknown`
    for runs recorded without one) and the commit that aggregated them, flagged when the tree was dirty (for an
    aggregate recorded without one, the commit that holds it)."""
    prov = prov or {}
    runs = ", ".join((c or "unknown")[:7] for c in prov.get("commits", []))
    if prov.get("commit"):
        own = prov["commit"][:7] + (" with uncommitted changes" if prov.get("dirty") else "")
    else:
        own = "unknown" + (f" (committed in {prov['committed_in'][:7]})" if prov.get("committed_in") else "")
    return f"runs from commit(s) {runs or 'unknown'}, aggregated at {own}"
