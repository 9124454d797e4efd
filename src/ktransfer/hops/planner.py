"""Choosing the intermediates of a chain: fixed, exhaustive over a small ladder, or greedy.

Every strategy scores a candidate chain by the validation accuracy of its final student (never
the test set). Greedy adds the candidate that helps most, only while it gains more than
`epsilon`, up to `max_hops` hops; exhaustive tries every subset of the candidates (kept in
decreasing complexity) with at most `max_hops` hops. Ties prefer the shorter chain.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ktransfer.hops.models import check_spec, spec_key, spec_label
from ktransfer.registry import ConfigError
from ktransfer.schema import validate

Spec = dict[str, Any]
Score = Callable[[list[Spec]], float]


@dataclass
class PlanConfig:
    """How the chain's intermediates are chosen; `dense`: every earlier model teaches the next."""

    strategy: Literal["fixed", "exhaustive", "greedy"] = "fixed"
    intermediates: list[dict[str, Any]] = field(default_factory=list)
    ladder: list[dict[str, Any]] = field(default_factory=list)
    construct: list[Literal["between", "truncate"]] = field(default_factory=list)
    epsilon: float = 0.0
    max_hops: int = 3
    dense: bool = False

    def __post_init__(self) -> None:
        validate(self, "plan")
        if self.max_hops < 1:
            raise ValueError(f"plan.max_hops must be >= 1, got {self.max_hops}")
        if self.epsilon < 0:
            raise ValueError(f"plan.epsilon must be >= 0, got {self.epsilon}")
        for i, s in enumerate(self.intermediates):
            check_spec(s, f"plan.intermediates[{i}]")
        for i, s in enumerate(self.ladder):
            check_spec(s, f"plan.ladder[{i}]")
        if self.strategy == "fixed" and (self.ladder or self.construct):
            raise ConfigError("plan: 'ladder' and 'construct' are for strategy exhaustive or greedy; "
                              "a fixed chain lists its 'intermediates'")
        if self.strategy != "fixed" and self.intermediates:
            raise ConfigError(f"plan.intermediates: only for strategy fixed; strategy {self.strategy} "
                              "searches 'ladder' (and 'construct')")
        if self.strategy == "fixed" and len(self.intermediates) + 1 > self.max_hops:
            raise ConfigError(f"plan: {len(self.intermediates)} intermediates make {len(self.intermediates) + 1} hops, "
                              f"more than plan.max_hops={self.max_hops}")


@dataclass
class Trial:
    """One chain the planner scored."""

    intermediates: list[Spec]
    val: float

    def as_dict(self) -> dict[str, Any]:
        return {"intermediates": [spec_label(s) for s in self.intermediates], "val": self.val}


def _better(new: float, old: float, epsilon: float) -> bool:
    return new - old > epsilon


def greedy(candidates: Sequence[Spec], score: Score, epsilon: float, max_hops: int) -> tuple[list[Spec], list[Trial]]:
    """Add one intermediate at a time (the best one), while it gains more than epsilon."""
    order = {spec_key(c): i for i, c in enumerate(candidates)}  # most complex first
    chain: list[Spec] = []
    trials = [Trial([], score([]))]
    best = trials[0].val
    while len(chain) + 1 < max_hops:
        round_best: tuple[float, list[Spec]] | None = None
        for c in candidates:
            if spec_key(c) in {spec_key(s) for s in chain}:
                continue
            trial = sorted([*chain, c], key=lambda s: order[spec_key(s)])
            val = score(trial)
            trials.append(Trial(trial, val))
            if round_best is None or val > round_best[0]:
                round_best = (val, trial)
        if round_best is None or not _better(round_best[0], best, epsilon):
            break
        best, chain = round_best
    return chain, trials


def exhaustive(candidates: Sequence[Spec], score: Score, epsilon: float, max_hops: int) -> tuple[list[Spec], list[Trial]]:
    """Score every subset of the candidates with at most max_hops - 1 intermediates; keep the best.

    A longer chain replaces a shorter best only when it gains more than epsilon.
    """
    trials: list[Trial] = []
    best: tuple[float, list[Spec]] | None = None
    for k in range(0, min(len(candidates), max_hops - 1) + 1):
        for subset in itertools.combinations(candidates, k):
            chain = list(subset)
            val = score(chain)
            trials.append(Trial(chain, val))
            if best is None or _better(val, best[0], epsilon):
                best = (val, chain)
    assert best is not None
    return best[1], trials


def plan(cfg: PlanConfig, candidates: Sequence[Spec], score: Score) -> tuple[list[Spec], list[Trial]]:
    """The chosen intermediates (most complex first) and every chain scored on the way."""
    if cfg.strategy == "fixed":
        return [dict(s) for s in cfg.intermediates], []
    if cfg.strategy == "greedy":
        return greedy(candidates, score, cfg.epsilon, cfg.max_hops)
    return exhaustive(candidates, score, cfg.epsilon, cfg.max_hops)
