"""Before/after comparison of the divergences: a git revision against the working tree, interleaved.

For every divergence and chunk size, each repeat runs the case once with the source of
`--before` (a git revision, extracted with `git archive`) and once with this checkout's `src/`,
alternating which goes first, every run in a fresh subprocess of `bench.py` (`--rss` for the peak
resident-set size of the whole process over one forward + backward, `--one` without the profiler
for the median time). Other work on the machine hits both sides alike; medians are reported.

    python benchmarks/divergences/ab.py --before 312f9d3 --tokens 4096 --chunks 512 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness
from harness import provenance, report  # noqa: E402  (commit, command and machine of every result)
BENCH = HERE / "bench.py"


def extract(revision: str, into: Path) -> Path:
    """The `src/` tree of `revision`, written under `into`."""
    archive = into / "src.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run(src: Path, flag: str, case: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, str(BENCH), flag, json.dumps(case)], capture_output=True, text=True,
                          check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision to compare against (e.g. main)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--divergences", nargs="+",
                        default=["forward_kl", "backward_kl", "jsd", "skew_forward_kl", "skew_backward_kl", "tvd",
                                 "soft_target"])
    parser.add_argument("--chunks", type=int, nargs="+", default=[512, 128])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved before/after pairs per case")
    parser.add_argument("--timed", type=int, default=2, help="timed forward + backward runs inside each process")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    from ktransfer.runner import environment

    started = time.perf_counter()
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True,
                              text=True, check=True).stdout.strip()
    rows = []
    env = environment()
    made_by = provenance.record()
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"before": extract(args.before, Path(tmp)), "after": ROOT / "src"}
        for chunk in args.chunks:
            for div in args.divergences:
                case = {"divergence": div, "tokens": args.tokens, "vocab": args.vocab, "chunk": chunk,
                        "device": "cpu", "dtype": "float32", "repeats": args.timed, "profile": False, "threads": 1}
                got: dict[str, dict[str, list[float]]] = {s: {"rss": [], "time": []} for s in sides}
                for r in range(args.repeats):
                    order = list(sides) if r % 2 == 0 else list(reversed(sides))
                    for side in order:
                        timed = run(sides[side], "--one", case)
                        got[side]["rss"].append(timed["first_step_peak_rss_mb"])
                        got[side]["time"].append(timed["median_cpu_s"])
                row = {**case, **{f"{s}_{k}": v for s in sides for k, v in got[s].items()}}
                for s in sides:
                    row[f"{s}_peak_rss_mb"] = statistics.median(got[s]["rss"])
                    row[f"{s}_median_s"] = statistics.median(got[s]["time"])
                rows.append(row)
                print(f"{div:16s} chunk={chunk:>4d}  peak RSS {row['before_peak_rss_mb']:.0f} -> "
                      f"{row['after_peak_rss_mb']:.0f} MB  time {row['before_median_s']:.3f} -> "
                      f"{row['after_median_s']:.3f} s", flush=True)
                write(args, revision, made_by, rows, env, started)


def write(args: argparse.Namespace, revision: str, made_by: dict[str, Any], rows: list[dict[str, Any]],
          env: dict[str, Any], started: float) -> None:
    """The results so far: JSON and a markdown table under `--out` (rewritten after every case)."""
    results = {"command": made_by["command"], "provenance": made_by, "before": revision, "rows": rows, "environment": env,
               "wall_time_s": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"divergence-memory-{args.tokens}x{args.vocab}"
    report.write_json(out / f"{tag}.json", results)
    lines = [f"Command: `{results['command']}` (before = {revision}); {env['machine']}, {env['cpu_count']} CPUs "
             f"shared with other jobs, torch {env['torch']}; student + teacher logits {args.tokens} x {args.vocab} "
             "float32, forward + backward; peak RSS of the whole process (torch included) over building the inputs and "
             f"the first forward + backward, each run in a fresh process, median of {args.repeats} interleaved runs; "
             f"time = CPU time of this process with 1 thread (not wall time: the 2 CPUs were shared with other jobs at a load of "
             f"about 8), median over runs of each run's median of {args.timed} further forward + backward.", "",
             "| divergence | chunk | peak RSS before (MB) | peak RSS after (MB) | CPU time before (s) | CPU time after (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['divergence']} | {r['chunk']} | {r['before_peak_rss_mb']:.0f} | {r['after_peak_rss_mb']:.0f} "
                     f"| {r['before_median_s']:.3f} | {r['after_median_s']:.3f} |")
    report.write_text(out / f"{tag}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
