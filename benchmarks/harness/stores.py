"""A store unit's result: what a build wrote and what its timings cover.

A store build resumes after a kill and computes only the examples no finished shard holds, so its
`BuildReport` counts this invocation's work. The size per target token is taken from the whole
store, and the result says how many examples the timed build computed (`computed` of `examples`),
so that a resumed build's time is never read as the whole build's. Sizes are the store's own
(`TeacherStore.bytes`: its shards, the manifest aside), as `ktransfer teacher-outputs info` gives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def store_result(out: str | Path, report: Any) -> dict[str, Any]:
    """Size of the finished store at `out` and the timings of the build `report` describes."""
    from ktransfer.store import TeacherStore

    store = TeacherStore.open(Path(out), verify=False)  # the build just verified what it wrote
    return {"examples": store.examples, "computed": int(report.computed), "positions": store.positions,
            "bytes": store.bytes, "bytes_per_token": store.bytes_per_position(), "build_s": round(report.total_s, 2),
            "forward_s": round(report.forward_s, 2)}


def build_time_note(stores: list[dict[str, Any]]) -> str | None:
    """A line for a table of stores whose timed build computed only part of them (resumed), else None."""
    partial = [s for s in stores if s.get("computed", s.get("examples")) != s.get("examples")]
    if not partial:
        return None
    parts = [f"{s.get('label', 'top-' + str(s.get('k')))}: {s['computed']:,} of {s['examples']:,} examples"
             for s in partial]
    return ("Build and forward times cover only the examples computed by the timed invocation (the rest were "
            "built before it stopped and was started again): " + "; ".join(parts) + ".")
