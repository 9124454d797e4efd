"""Multi-hop benchmark: the simple model alone, 1-hop and planned multi-hop transfer, per method.

For every setting (dataset + teacher + student + ladder), seed (which also draws the data split)
and transfer method, one unit records the test accuracy of: the student trained on labels alone,
the student after a 1-hop transfer, and the student at the end of a chain whose intermediates a
greedy planner picked on validation accuracy. Each finished unit is written at once to its own
JSON file and skipped when present, so a killed run continues where it stopped; finished hops
are shared between units through one hop store per (setting, seed).

    python benchmarks/multihop/bench.py --quick --jobs 2   # the README table (10 seeds, < 30 min on 2 CPUs)
    # --jobs N starts N worker processes (each takes the next setting and seed: their units share
    # a hop store), then aggregates

Writes benchmarks/results/multihop.json, benchmarks/multihop/results/multihop.md and .png.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the harness
from harness import grid, provenance  # noqa: E402
from harness.aggregate import aggregate_provenance, ci_nan  # noqa: E402
from harness.cli import Benchmark  # noqa: E402
from harness.cli import main as harness_main  # noqa: E402
from harness.grid import Unit  # noqa: E402
from harness.report import save_figure  # noqa: E402
METHODS = ["kd", "confidence", "profweight", "sratio"]
METHOD_SPECS: dict[str, dict[str, Any]] = {
    "kd": {"name": "kd", "temperature": 4.0, "alpha": 0.5},
    "confidence": {"name": "confidence"},
    # the committed tables (benchmarks/results/multihop.json) count the teacher's output as one more
    # probe besides its layers; the method's default, as in the paper, probes the layers only
    "profweight": {"name": "profweight", "margin": 0.0, "output_probe": True},
    "sratio": {"name": "sratio", "quantiles": [0.8, 1.0]},
    # the temperature regime: `--settings digits --methods kd_T1` adds distillation at T = 1
    "kd_T1": {"name": "kd", "temperature": 1.0, "alpha": 0.5},
}


def settings(quick: bool) -> dict[str, dict[str, Any]]:
    """Dataset, teacher, the two students and each student's ladder of candidate intermediates."""
    fm_train = 2000 if quick else 10000
    return {
        "digits": {"data": {"name": "digits"}, "teacher": {"kind": "mlp", "hidden": [128, 128]},
                   "students": {"mlp": ({"kind": "mlp", "hidden": [4]},
                                        [{"kind": "mlp", "hidden": [32]}, {"kind": "mlp", "hidden": [12]}]),
                                "tree": ({"kind": "tree", "max_depth": 3},
                                         [{"kind": "mlp", "hidden": [8]}, {"kind": "tree", "max_depth": 6}])}},
        "wine": {"data": {"name": "wine"}, "teacher": {"kind": "mlp", "hidden": [64, 64]},
                 "students": {"mlp": ({"kind": "mlp", "hidden": [1]},
                                      [{"kind": "mlp", "hidden": [16]}, {"kind": "mlp", "hidden": [4]}]),
                              "tree": ({"kind": "tree", "max_depth": 1},
                                       [{"kind": "mlp", "hidden": [4]}, {"kind": "tree", "max_depth": 3}])}},
        "breast_cancer": {"data": {"name": "breast_cancer"}, "teacher": {"kind": "mlp", "hidden": [64, 64]},
                          "students": {"mlp": ({"kind": "mlp", "hidden": [1]},
                                               [{"kind": "mlp", "hidden": [16]}, {"kind": "mlp", "hidden": [4]}]),
                                       "tree": ({"kind": "tree", "max_depth": 1},
                                                [{"kind": "mlp", "hidden": [4]}, {"kind": "tree", "max_depth": 3}])}},
        "fashion_mnist": {"data": {"name": "fashion_mnist", "train_size": fm_train, "val_size": 500, "test_size": 1000},
                          "teacher": {"kind": "mlp", "hidden": [256, 128]},
                          "students": {"mlp": ({"kind": "mlp", "hidden": [2]},
                                               [{"kind": "mlp", "hidden": [32]}, {"kind": "mlp", "hidden": [8]}]),
                                       "tree": ({"kind": "tree", "max_depth": 3},
                                                [{"kind": "mlp", "hidden": [8]}, {"kind": "tree", "max_depth": 7}])}},
    }


def _ece(proba: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence (equal-width bins)."""
    conf, pred = proba.max(1), proba.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(float((pred[m] == y[m]).mean()) - float(conf[m].mean()))
    return float(total)


def run_unit(setting: dict[str, Any], name: str, student: str, method: str, seed: int, args: argparse.Namespace,
             data_cache: dict[Any, Any]) -> dict[str, Any]:
    """One (setting, student, method, seed): simple alone, 1-hop and greedy multi-hop test accuracies."""
    from ktransfer.hops.chain import ChainRunner, load_chain_data, run_chain
    from ktransfer.hops.config import ChainConfig

    spec, ladder = setting["students"][student]
    base = {"data": {**setting["data"], **({"split_seed": seed})}, "teacher": setting["teacher"], "student": spec,
            "method": METHOD_SPECS[method], "seed": seed, "confidence_split": "holdout", "teacher_fraction": 0.5,
            "folds": 2, "train": {"max_steps": args.steps, "batch_size": 64, "lr": 0.003}, "compare_one_hop": False}
    store = Path(args.out) / "store" / f"{name}-s{seed}"
    if (name, seed) not in data_cache:
        data_cache.clear()
        data_cache[(name, seed)] = (load_chain_data(ChainConfig.from_dict(base)), {})
    data, simple_cache = data_cache[(name, seed)]
    t0 = time.perf_counter()
    one = run_chain(ChainConfig.from_dict(base), store, data=data, write_report=False, simple_cache=simple_cache)
    multi_cfg = ChainConfig.from_dict({**base, "plan": {"strategy": "greedy", "ladder": ladder,
                                                        "epsilon": args.epsilon, "max_hops": 2}})
    multi = run_chain(multi_cfg, store, data=data, write_report=False, simple_cache=simple_cache)
    runner = ChainRunner(ChainConfig.from_dict(base), data, store)
    teacher_proba = runner.teacher.model.predict_proba(data.x_test)
    return {
        "setting": name, "student": student, "method": method, "seed": seed,
        "student_spec": spec, "teacher_spec": setting["teacher"],
        "teacher_test": one.chain[0].test, "teacher_val": one.chain[0].val,
        "teacher_ece": _ece(teacher_proba, data.y_test),
        "simple_test": one.simple.test, "simple_val": one.simple.val,
        "one_hop_test": one.chain[-1].test, "one_hop_val": one.chain[-1].val,
        "multi_test": multi.chain[-1].test, "multi_val": multi.chain[-1].val,
        "intermediates": [r.label for r in multi.chain[1:-1]],
        "trials": [t.as_dict() for t in multi.trials],
        "one_hop_details": one.chain[-1].details, "n_student_train": int(len(data.student_idx)),
        "n_teacher_train": int(len(data.teacher_idx)), "n_val": int(len(data.y_val)), "n_test": int(len(data.y_test)),
        "wall_time_s": round(time.perf_counter() - t0, 2),
    }


def aggregate(units: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for u in units:
        cells.setdefault((u["setting"], u["student"], u["method"]), []).append(u)
    rows = []
    for (setting, student, method), us in sorted(cells.items()):
        us = sorted(us, key=lambda u: u["seed"])
        row = {"setting": setting, "student": student, "method": method, "n": len(us),
               "student_spec": us[0]["student_spec"], "n_student_train": us[0]["n_student_train"]}
        for key in ("teacher_test", "teacher_ece", "simple_test", "one_hop_test", "multi_test"):
            row[key] = ci_nan([u[key] for u in us])
        row["multi_minus_one_hop"] = ci_nan([u["multi_test"] - u["one_hop_test"] for u in us])
        row["one_hop_minus_simple"] = ci_nan([u["one_hop_test"] - u["simple_test"] for u in us])
        row["multi_minus_simple"] = ci_nan([u["multi_test"] - u["simple_test"] for u in us])
        row["gap_teacher_minus_simple"] = ci_nan([u["teacher_test"] - u["simple_test"] for u in us])
        row["chose_intermediate"] = float(np.mean([bool(u["intermediates"]) for u in us]))
        row["val_gain_planned"] = ci_nan([u["multi_val"] - u["one_hop_val"] for u in us])
        rows.append(row)
    diffs = [r["multi_minus_one_hop"][0] for r in rows]
    gaps = [r["gap_teacher_minus_simple"][0] for r in rows]
    corr = float(np.corrcoef(gaps, diffs)[0, 1]) if len(rows) > 2 and np.std(diffs) > 0 else float("nan")
    return {"meta": meta, "rows": rows, "corr_gap_vs_multi_gain": corr, "units": units}


def _fmt(ci: tuple[float, float], pct: bool = True) -> str:
    m, h = ci
    scale = 100.0 if pct else 1.0
    return f"{m * scale:.1f} ± {h * scale:.1f}" if not math.isnan(h) else f"{m * scale:.1f}"


def _fmt_diff(ci: tuple[float, float]) -> str:
    m, h = ci
    mark = "" if math.isnan(h) or abs(m) <= h else " *"
    return f"{m * 100:+.1f} ± {h * 100:.1f}{mark}"


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [f"Command: `{meta['command']}`; {meta['machine']}; torch {meta['torch']}, scikit-learn {meta['sklearn']}, "
             f"Python {meta['python']}; {provenance.code_line(meta.get('provenance'))}; {meta['n_seeds']} seeds (each its own data split); "
             f"{meta['unit_time_total_min']:.0f} min of unit time in all. Test accuracy in %, mean ± 95% t-interval; "
             "differences are paired by seed (* = interval excludes 0). Multi-hop = greedy planner over a "
             "2-rung ladder, at most one intermediate, chosen on validation.", "",
             "| setting | student | method | teacher | simple alone | 1-hop | multi-hop | multi − 1-hop | "
             "1-hop − simple | planner used an intermediate |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        from ktransfer.hops.models import spec_label

        lines.append(f"| {r['setting']} | {spec_label(r['student_spec'])} | {r['method']} | {_fmt(r['teacher_test'])} | "
                     f"{_fmt(r['simple_test'])} | {_fmt(r['one_hop_test'])} | {_fmt(r['multi_test'])} | "
                     f"{_fmt_diff(r['multi_minus_one_hop'])} | {_fmt_diff(r['one_hop_minus_simple'])} | "
                     f"{r['chose_intermediate'] * 100:.0f}% |")
    lines += ["", "Regimes (per setting and student, averaged over methods):", "",
              "| setting | student | student train points | teacher − simple (gap) | teacher ECE | "
              "mean multi − 1-hop |", "|---|---|---:|---:|---:|---:|"]
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in result["rows"]:
        by.setdefault((r["setting"], r["student"]), []).append(r)
    for (setting, student), rs in sorted(by.items()):
        lines.append(f"| {setting} | {student} | {rs[0]['n_student_train']} | "
                     f"{rs[0]['gap_teacher_minus_simple'][0] * 100:.1f} | {rs[0]['teacher_ece'][0]:.3f} | "
                     f"{np.mean([r['multi_minus_one_hop'][0] for r in rs]) * 100:+.2f} |")
    lines += ["", f"Correlation across cells of the capacity gap with the multi-hop gain: "
              f"{result['corr_gap_vs_multi_gain']:.2f}"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{r['setting']}\n{r['student']}/{r['method']}" for r in rows]
    means = [r["multi_minus_one_hop"][0] * 100 for r in rows]
    errs = [0 if math.isnan(r["multi_minus_one_hop"][1]) else r["multi_minus_one_hop"][1] * 100 for r in rows]
    colors = ["tab:blue" if r["student"] == "mlp" else "tab:green" for r in rows]
    ax.bar(range(len(rows)), means, yerr=errs, color=colors, capsize=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_ylabel("multi-hop − 1-hop test accuracy (points)")
    ax.set_title("Paired gain of planned multi-hop over 1-hop (95% CI); blue: MLP student, green: tree")
    fig.tight_layout()
    save_figure(fig, path, dpi=130)


class Multihop(Benchmark):
    """The multi-hop benchmark on the harness: one unit per setting, student, method and seed, each
    `<setting>-<student>-<method>-s<seed>.json` under OUT/<size>/units/; the units of one setting and seed run in
    one worker, in order (they share the hop store of that setting and seed)."""

    script = Path(__file__)
    description = globals()["__doc__"].splitlines()[0]
    default_seeds = 10
    context_keys = ("command", "provenance", "machine", "torch", "sklearn", "python", "wall_time_min", "sittings")

    def __init__(self) -> None:
        self.data_cache: dict[Any, Any] = {}

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--quick", action="store_true", help="small steps and Fashion-MNIST subsample (< 30 min, 2 CPUs)")
        p.add_argument("--settings", nargs="+", default=None, help="subset of: digits wine breast_cancer fashion_mnist")
        p.add_argument("--methods", nargs="+", default=METHODS, choices=list(METHOD_SPECS))
        p.add_argument("--students", nargs="+", default=["mlp", "tree"])
        p.add_argument("--out", default=str(HERE / "runs"), help="unit results and hop stores (resumable)")
        p.add_argument("--epsilon", type=float, default=0.0, help="planner: minimum validation gain to add a hop")
        p.add_argument("--report-dir", default=None,
                       help="write the JSON, table and plot here instead of benchmarks/results and "
                            "benchmarks/multihop/results")

    def setup(self, args: argparse.Namespace) -> None:
        args.started = time.perf_counter()
        args.steps = 120 if args.quick else 400
        torch.set_num_threads(1)
        args.all_settings = settings(args.quick)
        unknown = sorted(set(args.settings or []) - set(args.all_settings))
        if unknown:
            raise SystemExit(f"--settings: unknown {unknown}; choose from {list(args.all_settings)}")
        args.names = args.settings or list(args.all_settings)
        args.out_size = Path(args.out) / ("quick" if args.quick else "full")
        self.results(args).mkdir(parents=True, exist_ok=True)

    def results(self, args: argparse.Namespace) -> Path:
        return args.out_size / "units"

    def state(self, args: argparse.Namespace) -> Path:
        return args.out_size  # sittings.jsonl: one line per invocation that ran units

    def units(self, args: argparse.Namespace) -> list[Unit]:
        cells = grid.product(seed=range(args.seeds), setting=args.names, student=args.students, method=args.methods)
        return [Unit(f"{c['setting']}-{c['student']}-{c['method']}-s{c['seed']}", c,
                     group=f"{c['setting']}-s{c['seed']}") for c in cells]

    def run_unit(self, unit: Unit, args: argparse.Namespace) -> dict[str, Any]:
        k = unit.key
        result = run_unit(args.all_settings[k["setting"]], k["setting"], k["student"], k["method"], k["seed"],
                          argparse.Namespace(**{**vars(args), "out": str(args.out_size)}), self.data_cache)
        print(f"{unit.name}: simple {result['simple_test']:.3f} 1-hop {result['one_hop_test']:.3f} "
              f"multi {result['multi_test']:.3f} via {result['intermediates']} ({result['wall_time_s']:.1f}s)",
              flush=True)
        return result

    def context(self, args: argparse.Namespace) -> dict[str, Any]:
        import os

        import sklearn

        from harness.sittings import read_sittings

        made_by = provenance.record()
        return {"command": made_by["command"], "provenance": made_by,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
                "sklearn": sklearn.__version__, "python": platform.python_version(),
                "wall_time_min": (time.perf_counter() - args.started) / 60,
                "sittings": read_sittings(args.out_size / "sittings.jsonl")}

    def aggregate(self, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any] | None:
        units = [grid.read_unit(q) for q in sorted(self.results(args).glob("*.json"))]
        # every finished unit counts (whichever invocation made it), up to --seeds seeds
        units = [u for u in units if u["seed"] < args.seeds]
        if not units:
            return None
        meta = {**context, "provenance": aggregate_provenance(units, context), "n_seeds": args.seeds,
                "seeds": list(range(args.seeds)), "unit_time_total_min": sum(u["wall_time_s"] for u in units) / 60,
                "steps": args.steps, "settings": args.all_settings, "methods": METHOD_SPECS, "epsilon": args.epsilon,
                "confidence_split": "holdout (teacher_fraction 0.5), intermediates out-of-fold (2 folds)"}
        return aggregate(units, meta)

    def outputs(self, result: dict[str, Any], args: argparse.Namespace) -> dict[Path, Any]:
        suffix = "" if args.quick else "-full"
        json_dir = Path(args.report_dir) if args.report_dir else ROOT / "benchmarks" / "results"
        table_dir = Path(args.report_dir) if args.report_dir else HERE / "results"
        return {json_dir / f"multihop{suffix}.json": result, table_dir / f"multihop{suffix}.md": markdown(result),
                table_dir / f"multihop{suffix}.png": lambda path: plot(result, path)}

    def summary(self, result: dict[str, Any]) -> str:
        return markdown(result)


def main(argv: list[str] | None = None) -> int:
    return harness_main(Multihop(), argv)


if __name__ == "__main__":
    sys.exit(main())
