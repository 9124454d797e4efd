"""A benchmark's grid: its units, their result files and the work queue over them.

A unit is one run of the benchmark (a method at a size and seed, a teacher, a warm start). Its result is
one JSON file, `<results>/<unit name>.json`, written at once (atomically) with the provenance of the
process that made it, and a unit whose file exists is done: a benchmark started again skips it. Units
may need other units (a student needs its teacher), and units of one group run in one worker, in order
(they share state, such as a store of finished hops). A needed unit names the files it leaves for the units
that need it (`keeps`): when those files are gone (a fresh machine, a cleaned runs folder) while a unit that
needs them is still to run, the needed unit runs again, and says so, instead of its result file being taken
for the files.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.provenance import record
from harness.queue import WorkUnit, work_queue


@dataclass(frozen=True)
class Unit:
    """One run of a benchmark: `name` is the stem of its result file, `key` says what it is (method, seed, ...),
    `needs` names the units it waits for, `group` the units that run with it in one worker, `keeps` the files
    (or folders) it leaves for the units that need it."""

    name: str
    key: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    group: str | None = None
    keeps: tuple[str, ...] = ()


def product(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the first axis outermost: `product(seed=[0, 1], method=["a", "b"])`
    gives seed 0 with a and b, then seed 1 with a and b."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(list(v) for v in axes.values()))]


def unit_path(results: str | Path, unit: Unit | str) -> Path:
    """Where a unit's result lives."""
    return Path(results) / f"{unit.name if isinstance(unit, Unit) else unit}.json"


def write_unit(path: str | Path, result: Mapping[str, Any]) -> dict[str, Any]:
    """Write one finished unit's result at once, with the commit, command and machine that made it (a result that
    carries its own `provenance`, recorded when its run was made, keeps it). Returns what was written."""
    from ktransfer.checkpoint import write_json_atomic

    written = {"provenance": record(), **result}
    write_json_atomic(path, written)
    return written


def read_unit(path: str | Path) -> dict[str, Any]:
    """A unit's result; a file that is not a JSON object is an error naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: column {e.colno}: not a JSON unit result ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}:1: a unit result is a JSON object, got {type(data).__name__}")
    return data


def read_units(results: str | Path, units: Iterable[Unit | str]) -> list[dict[str, Any]]:
    """The results of the finished `units`, in their order (units without a result file are left out)."""
    paths = [unit_path(results, u) for u in units]
    return [read_unit(p) for p in paths if p.is_file()]


def work_units(units: Sequence[Unit], results: str | Path, run_unit: Callable[[Unit], Mapping[str, Any]]) -> list[WorkUnit]:
    """The queue's work: one `WorkUnit` per unit, or per group of units, running `run_unit` on each unit whose
    result file is missing, or whose kept files are missing while a unit that needs it is still to run, and
    writing its result at once."""
    results = Path(results)
    by_name = {u.name: u for u in units}
    group_of = {u.name: u.group or u.name for u in units}
    unknown = sorted({n for u in units for n in u.needs} - set(group_of))
    if unknown:
        raise ValueError(f"units need unknown units: {unknown}")
    members: dict[str, list[Unit]] = {}
    needed_by: dict[str, list[str]] = {}
    for u in units:
        members.setdefault(group_of[u.name], []).append(u)
        for n in u.needs:
            needed_by.setdefault(n, []).append(u.name)

    def lost(u: Unit) -> list[str]:
        return [p for p in u.keeps if not Path(p).exists()]

    def done(name: str) -> bool:
        """Its result exists, and so do its kept files unless no unit that needs them is still to run."""
        u = by_name[name]
        return unit_path(results, u).is_file() and (not lost(u) or all(done(d) for d in needed_by.get(name, ())))

    def run(group: list[Unit]) -> None:
        for u in group:
            if done(u.name):
                continue
            if unit_path(results, u).is_file():
                print(f"{u.name}: its result exists but the files it leaves for "
                      f"{', '.join(d for d in needed_by[u.name] if not done(d))} do not ({', '.join(lost(u))}); "
                      "running it again, and its result is replaced by this run's", file=sys.stderr, flush=True)
            write_unit(unit_path(results, u), run_unit(u))

    out = []
    for name, group in members.items():
        needs = tuple(dict.fromkeys(group_of[n] for u in group for n in u.needs if group_of[n] != name))
        out.append(WorkUnit(name, lambda g=group: run(g), lambda g=group: all(done(u.name) for u in g), needs))
    return out


def run_grid(units: Sequence[Unit], results: str | Path, run_unit: Callable[[Unit], Mapping[str, Any]],
             claims: str | Path, poll_s: float = 2.0) -> int:
    """Run every unit without a result, through the claim-based queue (several processes may call this at once
    on the same folders). Returns the number of queue items run by this process."""
    Path(results).mkdir(parents=True, exist_ok=True)
    return work_queue(work_units(units, results, run_unit), claims, poll_s)
