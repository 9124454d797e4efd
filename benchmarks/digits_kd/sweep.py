"""Choose the demo's distillation settings on the validation split of digits.

Grid: temperature x weight of the response (soft-target) term, labels term weight = 1 - w,
for the demo's teacher/student pair, over seeds 0, 1, 2. Selection uses mean validation
accuracy of the best checkpoint only; the test split is never read here.

    python benchmarks/digits_kd/sweep.py            # writes results/sweep.json and results/sweep.md
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from ktransfer.checkpoint import write_json_atomic, write_text_atomic
from ktransfer.config import RunConfig
from ktransfer.demo import demo_configs
from ktransfer.runner import environment, load_data, run

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9])
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    started = time.perf_counter()
    val: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            teacher_dir = Path(tmp) / f"teacher{seed}"
            configs = demo_configs(seed, teacher_dir)
            data = load_data(configs["teacher"])
            r = run(configs["teacher"], teacher_dir, progress=False, data=data)
            val.setdefault("teacher", []).append(r.train.best_metrics["accuracy"])
            r = run(configs["student alone"], Path(tmp) / "alone", progress=False, data=data)
            val.setdefault("student alone", []).append(r.train.best_metrics["accuracy"])
            base = configs["distilled student"].to_dict()
            for t, w in itertools.product(args.temperatures, args.weights):
                base["knowledge"] = [
                    {"type": "response", "divergence": "soft_target", "temperature": t, "weight": w},
                    {"type": "labels", "weight": round(1 - w, 6)},
                ]
                r = run(RunConfig.from_dict(base), Path(tmp) / "kd", progress=False, data=data)
                val.setdefault(f"T={t:g} w={w:g}", []).append(r.train.best_metrics["accuracy"])
                print(f"seed {seed} T={t:g} w={w:g}: val accuracy {r.train.best_metrics['accuracy']:.4f}", flush=True)
    means = {k: statistics.fmean(v) for k, v in val.items()}
    grid = {k: m for k, m in means.items() if k.startswith("T=")}
    best = max(grid, key=lambda k: grid[k])
    results = {"command": "python benchmarks/digits_kd/sweep.py", "seeds": args.seeds, "val_accuracy": val,
               "val_accuracy_mean": means, "best": best, "wall_time_s": round(time.perf_counter() - started, 1),
               "environment": environment()}
    out = Path(args.out)
    write_json_atomic(out / "sweep.json", results)
    lines = [f"Validation accuracy (mean of seeds {args.seeds}); command: `python benchmarks/digits_kd/sweep.py`; "
             f"{results['wall_time_s']} s on {results['environment']['cpu_count']} CPUs", "",
             "| setting | val accuracy (mean) | per seed |", "|---|---:|---|"]
    for k, m in sorted(means.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k}{' (chosen)' if k == best else ''} | {100 * m:.2f} % | "
                     f"{', '.join(f'{100 * v:.2f}' for v in val[k])} |")
    write_text_atomic(out / "sweep.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
