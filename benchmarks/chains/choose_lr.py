"""The students' learning rate of the chains benchmark, chosen on validation (never on test).

Trains the 1-layer student directly from the teacher (vanilla KD, seed 0, the `--quick` size) at each learning
rate given and records its validation accuracy (best checkpoint) and wall time, one JSON per rate under
benchmarks/results/chains/quick-lr/. The hops are content-keyed run directories shared with the benchmark
(`benchmarks/chains/runs/quick`), so the rate kept is not trained twice.

    OMP_NUM_THREADS=1 python benchmarks/chains/choose_lr.py 1e-4 5e-4 2e-3
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the harness
sys.path.insert(0, str(HERE))
import bench  # noqa: E402
from harness import provenance  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lrs", nargs="+", type=float)
    p.add_argument("--out", default=str(HERE / "runs" / "quick"), help="hop run directories (shared, resumable)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "chains" / "quick-lr"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for lr in args.lrs:
        path = results / f"lr-{lr:g}.json"
        if path.exists():
            continue
        size = copy.deepcopy(bench.SIZES["quick"])
        size["lr"] = lr
        key = {"kind": "chain", "method": "vanilla_kd", "student": 1, "chain": "direct", "seed": 0}
        unit = bench.run_chain_unit(key, size, Path(args.out))
        record = {"lr": lr, **key, "val_accuracy": unit["val"], "wall_s": unit["wall_s"],
                  "provenance": provenance.record(argv)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        print(json.dumps({"lr": lr, "val_accuracy": unit["val"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
