"""The one chain runner: walks teacher -> hops -> student for any kind of hop, reusing, counting and planning.

A chain is a list of hops; each hop's teacher is what the hop before it left (the chain's first
teacher for hop 1). How a hop is trained, saved and found again on disk is its backend's
(`HopBackend`): fitted models on tables (`hops.chain`) or ordinary runs (`hops.run_chain`).
What every kind shares is here:

- the walk, hop by hop, each hop keyed by its backend from its content and its teacher, so a hop
  walked before in this process (a planner trial sharing a prefix) is taken from memory;
- the count of hops trained here (not reused), which stops the chain after `stop_after_hops` as if
  killed (`ChainInterrupted`), so a rerun resumes from the hops on disk;
- the planner's score of a trial chain: the backend's validation score of its final student;
- the report files, `report.json` (with the environment) and `report.md`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ktransfer.hops.planner import Trial, exhaustive, greedy
from ktransfer.io import write_json_atomic, write_text_atomic
from ktransfer.environment import environment

Spec = dict[str, Any]

HopT = TypeVar("HopT")  # what a hop is made of (a model spec and a method; a run-config fragment and its place)
ResultT = TypeVar("ResultT")  # what a finished hop reports
TeacherT = TypeVar("TeacherT")  # what teaches the next hop
HopC = TypeVar("HopC", contravariant=True)  # a backend only takes hops


class ChainInterrupted(RuntimeError):
    """The chain stopped as asked (after some hops, or some optimizer steps), as if killed; a rerun resumes it."""


@dataclass
class Done(Generic[ResultT, TeacherT]):
    """One hop walked: its result (None for a first teacher not trained here), the next teacher, new or reused."""

    result: ResultT | None
    teacher: TeacherT
    new: bool


class PlanSection(Protocol):
    """What the driver reads of a chain's `plan` section (tables' and runs' alike)."""

    strategy: str
    epsilon: float
    max_hops: int


class HopBackend(Protocol[HopC, ResultT, TeacherT]):
    """How one kind of hop is trained, keyed, found again and scored."""

    def first_hop(self) -> Done[ResultT, TeacherT]:
        """Hop 0: the chain's first teacher (trained, loaded or taken as given)."""
        ...

    def check(self, hops: Sequence[HopC]) -> None:
        """Refuse a chain of these hops before any of them trains (a backend that checks ahead does nothing)."""
        ...

    def hop_key(self, index: int, hop: HopC, teacher: TeacherT) -> str:
        """The content key of hop `index` taught by `teacher`: equal keys, equal hops."""
        ...

    def hop_after(self, index: int, hop: HopC, teacher: TeacherT, key: str) -> Done[ResultT, TeacherT]:
        """Hop `index` taught by `teacher`: trained, continued, or reused from disk."""
        ...

    def score(self, result: ResultT) -> float:
        """The validation score of a hop's student, higher better (what the planner compares)."""
        ...


class ChainDriver(Generic[HopT, ResultT, TeacherT]):
    """Walks chains of one backend's hops; hops walked once in this process are reused by key."""

    def __init__(self, backend: HopBackend[HopT, ResultT, TeacherT], stop_after_hops: int | None = None) -> None:
        self.backend = backend
        self.stop_after_hops = stop_after_hops
        self.trained = 0  # hops trained (or continued) by this driver, not reused: what stop_after_hops counts
        self._first: Done[ResultT, TeacherT] | None = None
        self._memo: dict[str, tuple[ResultT, TeacherT]] = {}
        self.last_teacher: TeacherT | None = None  # what the last hop of the last walk would teach

    def _count(self, done: Done[Any, Any]) -> None:
        if not done.new:
            return
        self.trained += 1
        if self.stop_after_hops is not None and self.trained >= self.stop_after_hops:
            raise ChainInterrupted(f"stopped after {self.trained} newly trained hops, as asked")

    def first(self) -> Done[ResultT, TeacherT]:
        """The chain's first teacher, made once per driver."""
        if self._first is None:
            self._first = self.backend.first_hop()
            self._count(self._first)
        return self._first

    def walk(self, hops: Sequence[HopT]) -> list[ResultT]:
        """Every hop of first teacher -> hops (the last is the student); the results, the first teacher's first
        when it has one."""
        self.backend.check(hops)
        first = self.first()
        results = [first.result] if first.result is not None else []
        teacher = first.teacher
        for index, hop in enumerate(hops, start=1):
            key = self.backend.hop_key(index, hop, teacher)
            if key in self._memo:
                result, teacher = self._memo[key]
            else:
                done = self.backend.hop_after(index, hop, teacher, key)
                assert done.result is not None
                result, teacher = done.result, done.teacher
                self._memo[key] = (result, teacher)
                self._count(done)
            results.append(result)
        self.last_teacher = teacher
        return results

    def plan(self, cfg: PlanSection, candidates: Sequence[Spec],
             hops_of: Callable[[list[Spec]], Sequence[HopT]]) -> tuple[list[Spec], list[Trial]]:
        """The intermediates a searching plan (greedy or exhaustive) chooses among `candidates`, and every trial.

        A trial is walked as the hops `hops_of` makes of its intermediates and scored by the backend on its
        final student; trials that share a prefix share its hops.
        """

        def score(chain: list[Spec]) -> float:
            return self.backend.score(self.walk(hops_of(chain))[-1])

        search = greedy if cfg.strategy == "greedy" else exhaustive
        return search(candidates, score, cfg.epsilon, cfg.max_hops)


class Report(Protocol):
    """A chain's report, either kind: its fields and its words."""

    def as_dict(self) -> dict[str, Any]: ...

    def markdown(self) -> str: ...


def write_report(root: Path, report: Report) -> None:
    """`report.json` (with the environment it ran in) and `report.md` in the chain's directory."""
    write_json_atomic(root / "report.json", {**report.as_dict(), "environment": environment()})
    write_text_atomic(root / "report.md", report.markdown())


__all__ = ["ChainDriver", "ChainInterrupted", "Done", "HopBackend", "write_report"]
