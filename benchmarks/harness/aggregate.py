"""Aggregation over seeds: cells of unit results, means with 95% t-intervals and paired differences
(`ktransfer.stats`), and the context an aggregate records about its making.

Two conventions for "no interval" exist in the tables: None (rendered as the mean alone) and nan (kept by the
studies whose JSON aggregates hold nan); `ci` / `paired` give the first, `ci_nan` / `paired_nan` the second.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ktransfer.stats import mean_ci, paired_ci

from harness.provenance import aggregate_record, commits_of

Interval = tuple[float, float | None]
NAN_INTERVAL = (float("nan"), float("nan"))


def ci(values: Sequence[float]) -> Interval:
    """Mean and half-width of the 95% t-interval; None half-width for a single or a non-finite value."""
    return mean_ci(values)


def ci_nan(values: Sequence[float]) -> tuple[float, float]:
    """`ci` with nan for a missing half-width."""
    mean, half = mean_ci(values)
    return mean, float("nan") if half is None else half


def paired(values: Mapping[Hashable, float], reference: Mapping[Hashable, float]) -> Interval | None:
    """`ci` of the per-seed differences `values - reference` over the seeds both hold; None when they share none."""
    return paired_ci(values, reference)


def paired_nan(values: Mapping[Hashable, float], reference: Mapping[Hashable, float]) -> tuple[float, float]:
    """`paired` with nan for a missing half-width, and (nan, nan) when the two share no seed."""
    interval = paired_ci(values, reference)
    if interval is None:
        return NAN_INTERVAL
    return interval[0], float("nan") if interval[1] is None else interval[1]


def cells(records: Iterable[Mapping[str, Any]], keys: Sequence[str],
          seed: str = "seed") -> dict[tuple[Any, ...], dict[Any, Mapping[str, Any]]]:
    """Unit results by cell (their values of `keys`) and, within a cell, by seed; a seed twice in a cell is an
    error (two results of one run would be averaged as two)."""
    out: dict[tuple[Any, ...], dict[Any, Mapping[str, Any]]] = {}
    for r in records:
        cell = tuple(r[k] for k in keys)
        by_seed = out.setdefault(cell, {})
        if r[seed] in by_seed:
            raise ValueError(f"two results for {dict(zip(keys, cell))}, {seed} {r[seed]}")
        by_seed[r[seed]] = r
    return out


def committed_meta(path: str | Path) -> dict[str, Any]:
    """The `meta` block of a committed aggregate (the record of how it was made)."""
    path = Path(path)
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
        raise ValueError(f"{path}: not a benchmark aggregate (no 'meta' object at the top level)")
    return data["meta"]


def aggregation_context(reproduce: str | Path | None, keys: Sequence[str],
                        fresh: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What an aggregate records about its own making (command, machine, versions, sittings, provenance: the
    `keys`): measured now by `fresh()`, or, when reproducing a committed aggregate (`reproduce`: its JSON), taken
    from it, so that only what the unit results determine is recomputed."""
    if reproduce is None:
        return fresh()
    meta = committed_meta(reproduce)
    return {k: meta[k] for k in keys if k in meta}


def aggregate_provenance(records: Sequence[Mapping[str, Any]], context: Mapping[str, Any]) -> dict[str, Any]:
    """The aggregate's provenance block: the context's (the aggregating code, command, machine), else this
    process's, with `commits`, the commits of `records`, computed from them."""
    own = context.get("provenance")
    if own is None:
        return aggregate_record(records, command=context.get("command"))
    return {**{k: v for k, v in own.items() if k != "commits"}, "commits": commits_of(records)}
