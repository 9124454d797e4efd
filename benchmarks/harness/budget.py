"""A benchmark's expected cost: its units' seconds summed, and its wall time with `--jobs` workers.

Each benchmark knows what one unit costs with one process alone on the machine (its `unit_seconds`, from
step times it measured); the sum over units, the longest chain of units that wait on each other, and the
slowdown of workers sharing the cores are the same for all of them, and live here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from harness.grid import Unit

# Two workers side by side on the 2-core machine, with little else running, make each step slower than one process
# alone by this factor: the real-teacher --full warm starts of seeds 1 and 2, run side by side (3.55 and 3.58 s a
# step, benchmarks/results/real_teacher/full/warm-s1.json and warm-s2.json), against the --quick warm start alone
# (3.49 s): 1.018 and 1.028. Sittings that shared the cores with other work (a test suite) ran 1.29 to 1.65 times
# slower than alone; the expectations are for the machine left to the benchmark.
SIDE_BY_SIDE = 1.02


def expected_budget(units: Sequence[Unit], seconds: Callable[[Unit], float], jobs: int,
                    side_by_side: float = SIDE_BY_SIDE) -> dict[str, float]:
    """Expected minutes of `units`, each costing `seconds(unit)` alone, needs listed before the units needing them.

    `work_min`: the sum, one process alone. `critical_path_min`: the longest chain of units that wait on each
    other. `wall_min` with `jobs` workers: the harness's queue played out, each worker as it comes free taking the
    first unit in grid order whose needs have finished (waiting for the next to finish when none has), every unit
    `side_by_side` times slower when more than one worker runs.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    cost = {u.name: seconds(u) for u in units}
    finish: dict[str, float] = {}
    for u in units:
        missing = [n for n in u.needs if n not in finish]
        if missing:
            raise ValueError(f"unit {u.name} needs {missing}, which do not come before it in the grid")
        finish[u.name] = cost[u.name] + max((finish[n] for n in u.needs), default=0.0)
    slower = side_by_side if jobs > 1 else 1.0
    free = [0.0] * jobs  # when each worker comes free
    done: dict[str, float] = {}  # when each taken unit finishes
    pending = list(units)
    while pending:
        now = min(free)
        worker = free.index(now)
        ready = next((u for u in pending if all(done.get(n, float("inf")) <= now for n in u.needs)), None)
        if ready is None:  # every pending unit waits on one still running: wait for the next to finish
            free[worker] = min(t for t in done.values() if t > now)
            continue
        pending.remove(ready)
        done[ready.name] = free[worker] = now + slower * cost[ready.name]
    return {"work_min": sum(cost.values()) / 60, "critical_path_min": max(finish.values(), default=0.0) / 60,
            "wall_min": max(done.values(), default=0.0) / 60}
