"""Ladders: candidate models ordered by complexity, and construction of new intermediates.

A rung is a model spec (`{kind: mlp, hidden: [32]}`); `complexity` (parameters, or the node
bound of trees) orders them. New intermediates are made between two rungs of the same kind
(geometric mean of widths, middle depth) or by truncating a network teacher (its first layers,
initialised from the teacher's weights).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ktransfer.hops.models import complexity, spec_key, spec_label
from ktransfer.registry import ConfigError


def mlp_rungs(widths: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """MLP specs, one per hidden-width list, e.g. [[256, 256], [64], [16]]."""
    return [{"kind": "mlp", "hidden": [int(w) for w in h]} for h in widths]


def cnn_rungs(channels: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """Small-CNN specs, one per channel list, e.g. [[32, 64], [8, 16]]."""
    return [{"kind": "cnn", "channels": [int(c) for c in ch]} for ch in channels]


def tree_rungs(depths: Sequence[int]) -> list[dict[str, Any]]:
    """Decision-tree specs, one per maximum depth."""
    return [{"kind": "tree", "max_depth": int(d)} for d in depths]


def ordered(specs: Sequence[Mapping[str, Any]], info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Specs sorted from most to least complex, duplicates (same spec) removed."""
    unique = {spec_key(s): dict(s) for s in specs}
    return sorted(unique.values(), key=lambda s: (-complexity(s, info), spec_key(s)))


def check_chain(specs: Sequence[Mapping[str, Any]], info: Mapping[str, Any], where: str = "chain") -> list[int]:
    """Complexities of a chain teacher -> ... -> student; each model must be strictly simpler than the one before."""
    sizes = [complexity(s, info) for s in specs]
    for i in range(1, len(specs)):
        if sizes[i] >= sizes[i - 1]:
            role = "the student" if i == len(specs) - 1 else f"intermediate {i}"
            raise ConfigError(
                f"{where}: {role} {spec_label(specs[i])} (complexity {sizes[i]}) is not simpler than its teacher "
                f"{spec_label(specs[i - 1])} (complexity {sizes[i - 1]}); a chain must strictly decrease in complexity"
            )
    return sizes


def between(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any] | None:
    """A spec midway between two specs of the same kind, or None when they have none in common.

    MLP/CNN: the shorter list of layers, each width the geometric mean of the two (rounded);
    trees: the middle depth; boosted trees and forests: geometric mean of the number of trees.
    """
    if a.get("kind") != b.get("kind"):
        return None
    kind = a["kind"]
    if kind in ("mlp", "cnn"):
        key = "hidden" if kind == "mlp" else "channels"
        default = [64] if kind == "mlp" else [32, 64]
        la, lb = list(a.get(key, default)), list(b.get(key, default))
        n = min(len(la), len(lb))
        la = la[:n] if len(la) == n else la[:n - 1] + [la[-1]]
        lb = lb[:n] if len(lb) == n else lb[:n - 1] + [lb[-1]]
        widths = [max(1, round(math.sqrt(x * y))) for x, y in zip(la, lb)]
        return {**{k: v for k, v in a.items() if k != "init_from_teacher"}, key: widths}
    if kind == "tree":
        da, db = a.get("max_depth", 3), b.get("max_depth", 3)
        if da is None or db is None:
            return None
        return {**a, "max_depth": (int(da) + int(db)) // 2}
    if kind in ("gbdt", "forest"):
        na, nb = int(a.get("n_estimators", 100)), int(b.get("n_estimators", 100))
        return {**a, "n_estimators": max(1, round(math.sqrt(na * nb)))}
    return None


def truncations(teacher: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The teacher's first k layers (k < depth) with a new output layer, initialised from the teacher."""
    kind = teacher.get("kind")
    if kind not in ("mlp", "cnn"):
        return []
    key = "hidden" if kind == "mlp" else "channels"
    layers = list(teacher.get(key, [64] if kind == "mlp" else [32, 64]))
    return [{**teacher, key: layers[:k], "init_from_teacher": True} for k in range(1, len(layers))]


def candidates(teacher: Mapping[str, Any], student: Mapping[str, Any], rungs: Sequence[Mapping[str, Any]],
               info: Mapping[str, Any], construct: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Intermediates strictly between teacher and student in complexity, most complex first.

    `construct` adds built ones: 'between' (midway between neighbouring rungs, teacher and
    student included) and 'truncate' (truncated teacher).
    """
    hi, lo = complexity(teacher, info), complexity(student, info)
    pool = [dict(r) for r in rungs]
    if "between" in construct:
        line = ordered([teacher, *rungs, student], info)
        pool += [m for x, y in zip(line, line[1:]) if (m := between(x, y)) is not None]
    if "truncate" in construct:
        pool += truncations(teacher)
    unknown = sorted(set(construct) - {"between", "truncate"})
    if unknown:
        raise ConfigError(f"plan.construct: unknown '{unknown[0]}'; valid choices: between, truncate")
    return [s for s in ordered(pool, info) if lo < complexity(s, info) < hi]
