"""The driver every benchmark shares: its common flags, running the grid (with `--jobs N` workers, resumable,
timed per sitting) and aggregating the finished units into the JSON, tables and plots.

A benchmark is a subclass of `Benchmark` that declares its grid and fills in what is its own:

    class Study(Benchmark):
        script = Path(__file__)
        def units(self, args):                 # the grid: one Unit per run
            return [Unit(f"{m}-s{s}", {"method": m, "seed": s}) for s in range(args.seeds) for m in METHODS]
        def run_unit(self, unit, args):        # one run -> its result (written by the harness)
            return {**unit.key, "score": train_and_score(**unit.key)}
        def aggregate(self, args, context):    # finished results -> the aggregate (None: nothing finished)
            ...
        def outputs(self, result, args):       # the aggregate -> files (text, JSON, plots)
            return {Path(args.out) / "study.json": result, Path(args.out) / "study.md": table(result)}

    if __name__ == "__main__":
        sys.exit(main(Study(), sys.argv[1:]))
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.aggregate import aggregation_context
from harness.grid import Unit, run_grid
from harness.provenance import invoked_command
from harness.queue import clear_claims, run_workers
from harness.report import Output, write_outputs
from harness.sittings import record_sitting


class Benchmark:
    """A benchmark's declaration: its grid, how one unit runs, how results aggregate and what files they make."""

    script: Path  # the benchmark's file, started again as its workers
    description: str = ""
    default_seeds: int = 3
    # what an aggregate records about its own making, taken from the committed aggregate when reproducing it
    context_keys: tuple[str, ...] = ("command", "provenance")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The benchmark's own flags."""

    def setup(self, args: argparse.Namespace) -> None:
        """Settings every process needs (threads, folders), once the flags are parsed."""

    def results(self, args: argparse.Namespace) -> Path:
        """The folder of the unit results."""
        raise NotImplementedError

    def state(self, args: argparse.Namespace) -> Path:
        """The folder of the claims and of the sittings log (default: the results folder)."""
        return self.results(args)

    def prepare(self, args: argparse.Namespace) -> None:
        """Work done once, by the starting process, before any worker (e.g. a cached teacher)."""

    def units(self, args: argparse.Namespace) -> list[Unit]:
        raise NotImplementedError

    def run_unit(self, unit: Unit, args: argparse.Namespace) -> Mapping[str, Any]:
        raise NotImplementedError

    def sitting_command(self, args: argparse.Namespace) -> str | None:
        """The command a sitting is recorded under."""
        return invoked_command()

    def worker_env(self, args: argparse.Namespace) -> Mapping[str, str] | None:
        """The environment of the worker processes (None: this process's)."""
        return None

    def context(self, args: argparse.Namespace) -> dict[str, Any]:
        """The aggregation context measured now (the `context_keys`)."""
        return {"command": invoked_command()}

    def aggregate(self, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def outputs(self, result: dict[str, Any], args: argparse.Namespace) -> dict[Path, Output]:
        raise NotImplementedError

    def summary(self, result: dict[str, Any]) -> str:
        """What is printed at the end (default: nothing)."""
        return ""


def common_parser(bench: Benchmark) -> argparse.ArgumentParser:
    """The flags every benchmark has, then its own."""
    p = argparse.ArgumentParser(description=bench.description)
    p.add_argument("--seeds", type=int, default=bench.default_seeds, help="seeds 0 .. N-1")
    p.add_argument("--jobs", type=int, default=1, help="worker processes; each takes the next unit whose inputs "
                                                       "are ready, then this process aggregates")
    p.add_argument("--worker", default="0/1", metavar="I/N", help="(set by --jobs) run as worker I of N")
    p.add_argument("--aggregate-only", action="store_true", help="only aggregate the finished units")
    p.add_argument("--reproduce", default=None, metavar="AGGREGATE.json",
                   help="aggregate the finished units as the given committed aggregate was (its command, machine "
                        "and versions); implies --aggregate-only")
    bench.add_arguments(p)
    return p


def apply_sets(size: dict[str, Any], sets: Sequence[str], also: Sequence[str] = ()) -> None:
    """Apply `--set KEY=JSON` items to `size` in place; a key neither in `size` nor in `also` is refused, listing
    the valid ones."""
    for item in sets:
        key, value = item.split("=", 1)
        if key not in size and key not in also:
            raise SystemExit(f"--set {key}: unknown size setting; valid: {', '.join([*sorted(size), *also])}")
        size[key] = json.loads(value)


def parse(bench: Benchmark, argv: Sequence[str] | None) -> argparse.Namespace:
    p = common_parser(bench)
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        index, count = (int(v) for v in args.worker.split("/"))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        p.error(f"--worker is I/N with 0 <= I < N, got {args.worker!r}")
    if args.reproduce is not None:
        if not Path(args.reproduce).is_file():
            p.error(f"--reproduce: no such file {args.reproduce}")
        args.aggregate_only = True
    return args


def run(bench: Benchmark, args: argparse.Namespace, argv: Sequence[str] | None) -> int | None:
    """Run the units without a result (as `--jobs` workers, or in this process); a worker returns 0 when done,
    the starting process None, after recording its sitting. A sitting that fails is recorded too (`failed`), so
    that the sittings' minutes stay the benchmark's whole wall time."""
    started = time.perf_counter()
    is_worker = args.worker != "0/1"
    state = bench.state(args)
    if not is_worker:
        bench.prepare(args)
    ok = False
    try:
        if args.jobs > 1 and not is_worker:
            clear_claims(state / "claims")
            ok = run_workers(bench.script, argv, args.jobs, bench.worker_env(args))
        else:
            run_grid(bench.units(args), bench.results(args), lambda u: bench.run_unit(u, args), state / "claims")
            ok = True
    finally:
        if not is_worker:
            record_sitting(state / "sittings.jsonl", (time.perf_counter() - started) / 60, bench.sitting_command(args),
                           failed=not ok)
    if is_worker:
        return 0
    return None if ok else 1


def main(bench: Benchmark, argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run the grid unless `--aggregate-only`, then aggregate and write the outputs."""
    args = parse(bench, argv)
    bench.setup(args)
    if not args.aggregate_only:
        code = run(bench, args, argv)
        if code is not None:
            return code
    context = aggregation_context(args.reproduce, bench.context_keys, lambda: bench.context(args))
    result = bench.aggregate(args, context)
    if result is None:
        print("no finished runs to aggregate")
        return 1
    write_outputs(bench.outputs(result, args))
    text = bench.summary(result)
    if text:
        print(text)
    return 0


def threads_per_worker_env(args: argparse.Namespace) -> dict[str, str]:
    """This process's environment with OMP_NUM_THREADS set to the CPUs shared out among `--jobs` workers."""
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs))}
