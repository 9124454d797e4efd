"""The provenance block every benchmark result carries: which code, which command, which machine.

Every per-run JSON and every aggregate a benchmark script writes holds

    "provenance": {"commit": <git HEAD, full hash>, "dirty": <uncommitted changes in the tree>,
                   "command": <the command line that ran it>, "machine": <platform, CPUs, versions>}

and an aggregate also lists `"commits"`: every commit its runs came from (they may span several
invocations). A script in benchmarks/<study>/ imports this file from its parent folder (benchmarks/
is not an installed package):

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import provenance
    result = {..., "provenance": provenance.record()}

The functions themselves live in `ktransfer.workers`, which also hands the command line of a
`--jobs N` invocation to its worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def record(argv: Sequence[str] | None = None, command: str | None = None) -> dict[str, Any]:
    """The provenance block of a result made now, by this process, from the code of this repository."""
    from ktransfer.workers import provenance

    return provenance(ROOT, argv=argv, command=command)


def aggregate_record(units: Sequence[Mapping[str, Any]], argv: Sequence[str] | None = None,
                     command: str | None = None) -> dict[str, Any]:
    """The provenance block of an aggregate of `units`: its own (the aggregating code and command) plus
    `commits`, the commits of the units (see `ktransfer.workers.commits_of`)."""
    from ktransfer.workers import commits_of

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
