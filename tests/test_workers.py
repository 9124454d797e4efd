"""The benchmark harness's work queue: every unit runs once across processes, after what it needs, and a dead
worker's claim is taken over; the library's deprecated `ktransfer.workers` names where they went."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import BENCHMARKS  # noqa: E402  (puts benchmarks/ on sys.path)
from harness.queue import WorkUnit, work_queue  # noqa: E402

SCRIPT = textwrap.dedent(f"""
    import json, os, sys, time
    from pathlib import Path
    sys.path.insert(0, {str(BENCHMARKS)!r})
    from harness.queue import WorkUnit, work_queue

    out = Path(sys.argv[1])
    graph = {{"teacher": [], "a": [], "b": [], "s1": ["teacher"], "s2": ["teacher", "a"], "s3": ["s2"]}}

    def run(name):
        def go():
            start = time.time()
            time.sleep(0.3 if name == "teacher" else 0.05)
            (out / f"{{name}}.json").write_text(json.dumps({{"pid": os.getpid(), "start": start, "end": time.time()}}))
        return go

    units = [WorkUnit(n, run(n), lambda n=n: (out / f"{{n}}.json").is_file(), needs) for n, needs in graph.items()]
    print(work_queue(units, out / "claims", poll_s=0.02))
""")


def test_two_processes_run_each_unit_once_after_its_needs(tmp_path: Path) -> None:
    import json

    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    counts = [int(p.communicate(timeout=60)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(counts) == 6 and min(counts) >= 1  # each unit once, and the work was shared
    rec = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("teacher", "a", "b", "s1", "s2", "s3")}
    for unit, needs in {"s1": ["teacher"], "s2": ["teacher", "a"], "s3": ["s2"]}.items():
        assert all(rec[unit]["start"] >= rec[n]["end"] for n in needs)
    assert not list((tmp_path / "claims").glob("*.claim"))


def test_a_dead_workers_claim_is_taken_over_and_a_failure_releases_its_claim(tmp_path: Path) -> None:
    done: list[str] = []
    claims = tmp_path / "claims"
    claims.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (claims / "x.claim").write_text(dead.stdout.strip())  # left by a process that no longer exists
    units = [WorkUnit("x", lambda: done.append("x"), lambda: "x" in done)]
    assert work_queue(units, claims, poll_s=0.01) == 1 and done == ["x"]

    def boom() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        work_queue([WorkUnit("y", boom, lambda: False)], claims, poll_s=0.01)
    assert not (claims / "y.claim").exists()
    with pytest.raises(ValueError, match="unknown units"):
        work_queue([WorkUnit("z", lambda: None, lambda: False, ("nope",))], claims)
    with pytest.raises(RuntimeError, match="does not report itself done"):
        work_queue([WorkUnit("w", lambda: None, lambda: False)], claims, poll_s=0.01)


def test_sittings_are_appended_and_read_back(tmp_path: Path) -> None:
    from harness.sittings import read_sittings, record_sitting

    log = tmp_path / "sittings.jsonl"
    assert read_sittings(log) == []
    record_sitting(log, 12.5)
    record_sitting(log, 3.0)
    assert [s["wall_time_min"] for s in read_sittings(log)] == [12.5, 3.0]
    assert all("ended" in s and "command" not in s for s in read_sittings(log))
    record_sitting(log, 1.0, command="bench --quick --methods a")
    assert read_sittings(log)[-1]["command"] == "bench --quick --methods a"


def test_a_broken_sittings_line_is_named() -> None:
    import tempfile

    from harness.sittings import read_sittings, wall_minutes

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "sittings.jsonl"
        log.write_text('{"wall_time_min": 1.0}\n{"wall_time_min": \n')
        with pytest.raises(ValueError, match=r"sittings.jsonl:2: not a JSON sitting record"):
            read_sittings(log)
    assert wall_minutes([{"wall_time_min": 2.0}, {"wall_time_min": 1.5, "command": "b"}], "a") == {"a": 2.0, "b": 1.5}


def test_the_library_keeps_no_work_queue_and_its_old_module_says_where_things_went() -> None:
    import importlib
    import warnings

    import ktransfer.provenance

    sys.modules.pop("ktransfer.workers", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        workers = importlib.import_module("ktransfer.workers")
    assert any(issubclass(w.category, DeprecationWarning) and "ktransfer.provenance" in str(w.message) for w in caught)
    assert workers.provenance is ktransfer.provenance.provenance and workers.git_state is ktransfer.provenance.git_state
    for name, module in (("work_queue", "queue"), ("WorkUnit", "queue"), ("record_sitting", "sittings")):
        with pytest.raises(AttributeError, match=f"benchmarks/harness/{module}.py"):
            getattr(workers, name)
