"""`ktransfer demo`: the whole job on embedded data, no downloads.

On scikit-learn's bundled digits, for each seed: train a teacher, train a small student on the
labels alone, and distil the same student from the teacher; report test accuracy (mean and
95% confidence interval over seeds, and the paired distilled-minus-alone difference),
parameter counts and wall time. The three runs are ordinary `ktransfer run`s, written under
the output directory with their configs, so each can be inspected, resumed or re-evaluated.

The distillation settings (temperature, weights, schedule) were chosen on the validation split
by `benchmarks/digits_kd/sweep.py`; the test split is touched only for the final table.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from ktransfer.checkpoint import write_json_atomic, write_text_atomic
from ktransfer.config import RunConfig, apply_overrides
from ktransfer.provenance import library_provenance
from ktransfer.runner import environment, evaluate_run, load_data, run
from ktransfer.stats import mean_ci  # re-exported: ktransfer.demo.mean_ci

__all__ = ["demo_configs", "markdown_table", "mean_ci", "print_table", "run_demo", "summarize"]

# Chosen on validation by benchmarks/digits_kd/sweep.py (tests/test_demo.py keeps them in sync).
TEACHER: dict[str, Any] = {"builder": "cnn", "channels": [32, 64], "dropout": 0.2}
TEACHER_OPTIM: dict[str, Any] = {"name": "adamw", "lr": 0.003}
TEACHER_STEPS = 1000
STUDENT: dict[str, Any] = {"builder": "mlp", "hidden": [32]}
TRAIN: dict[str, Any] = {"max_steps": 600, "batch_size": 64, "eval_every": 50, "log_every": 25}
OPTIM: dict[str, Any] = {"name": "adamw", "lr": 0.01}
SCHEDULE: dict[str, Any] = {"name": "cosine"}
KD_TERMS: list[dict[str, Any]] = [
    {"type": "response", "divergence": "soft_target", "temperature": 8.0, "weight": 0.75},
    {"type": "labels", "weight": 0.25},
]
ROLES = ("teacher", "student alone", "distilled student")


def demo_configs(seed: int, teacher_dir: str | Path, overrides: list[str] | None = None) -> dict[str, RunConfig]:
    """The three run configs of one seed; `overrides` apply to the two student runs only."""
    train = {**TRAIN, "seed": seed}
    teacher = RunConfig.from_dict({
        "data": {"name": "digits"}, "student": TEACHER, "knowledge": [{"type": "labels"}],
        "optim": TEACHER_OPTIM, "schedule": SCHEDULE, "train": {**train, "max_steps": TEACHER_STEPS},
    })
    common = {"data": {"name": "digits"}, "student": STUDENT, "optim": OPTIM, "schedule": SCHEDULE, "train": train}
    alone = {**common, "knowledge": [{"type": "labels"}]}
    distilled = {**common, "teacher": {"from_run": str(teacher_dir)}, "knowledge": KD_TERMS}
    return {
        "teacher": teacher,
        "student alone": RunConfig.from_dict(apply_overrides(alone, overrides or [])),
        "distilled student": RunConfig.from_dict(apply_overrides(distilled, overrides or [])),
    }


def run_demo(out: str | Path, seeds: list[int] | tuple[int, ...] = (0, 1, 2), quick: bool = False,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the demo for every seed; write results.json and results.md under `out`."""
    out = Path(out)
    overrides = list(overrides or [])
    if quick:
        overrides = ["train.max_steps=20", "train.eval_every=10", *overrides]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(seeds) * len(ROLES), desc="demo runs", unit="run", dynamic_ncols=True)
    for seed in seeds:
        teacher_dir = out / f"seed{seed}" / "teacher"
        configs = demo_configs(seed, teacher_dir, overrides)
        if quick:
            configs["teacher"] = RunConfig.from_dict(apply_overrides(configs["teacher"].to_dict(),
                                                                     ["train.max_steps=20", "train.eval_every=10"]))
        data = load_data(configs["teacher"])
        for role, cfg in configs.items():
            run_dir = out / f"seed{seed}" / role.replace(" ", "_")
            bar.set_postfix_str(f"seed {seed}: {role}")
            result = run(cfg, run_dir, progress=False, data=data, overwrite=True)
            bar.update(1)
            test = evaluate_run(run_dir, split="test")
            rows.append({
                "seed": seed, "role": role, "run_dir": str(run_dir), "parameters": result.student_parameters,
                "val_accuracy": result.train.best_metrics.get("accuracy"), "test_accuracy": test["accuracy"],
                "test_loss": test["loss"], "train_wall_time_s": round(result.train.wall_time_s, 3),
            })
    bar.close()
    command = "ktransfer demo " + " ".join(
        [f"--seeds {' '.join(map(str, seeds))}", *(["--quick"] if quick else []), *(f"--set {o}" for o in overrides if not quick)])
    results = {
        "command": command, "provenance": library_provenance(command),
        "seeds": list(seeds), "quick": quick, "overrides": overrides, "rows": rows,
        "summary": summarize(rows), "total_wall_time_s": round(time.perf_counter() - started, 1),
        "environment": environment(),
    }
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", markdown_table(results))
    return results


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per role: mean/CI of test accuracy, parameters, wall time; plus the paired KD gain."""
    summary: dict[str, Any] = {}
    for role in ROLES:
        mine = [r for r in rows if r["role"] == role]
        if not mine:
            continue
        mean, ci = mean_ci([r["test_accuracy"] for r in mine])
        summary[role] = {
            "test_accuracy_mean": mean, "test_accuracy_ci95": ci, "parameters": mine[0]["parameters"],
            "val_accuracy_mean": statistics.fmean(r["val_accuracy"] for r in mine),
            "train_wall_time_s_mean": statistics.fmean(r["train_wall_time_s"] for r in mine), "n": len(mine),
        }
    by_seed = {(r["seed"], r["role"]): r["test_accuracy"] for r in rows}
    diffs = [by_seed[(s, "distilled student")] - by_seed[(s, "student alone")]
             for s in sorted({r["seed"] for r in rows})
             if (s, "distilled student") in by_seed and (s, "student alone") in by_seed]
    if diffs:
        mean, ci = mean_ci(diffs)
        summary["distilled minus alone"] = {"mean": mean, "ci95": ci, "per_seed": diffs}
    return summary


def _points(value: float, ci: float | None, sign: bool = False) -> str:
    """A fraction in percent (points), with ' ± CI' only where an interval exists (two seeds or more)."""
    text = f"{100 * value:+.2f}" if sign else f"{100 * value:.2f}"
    return text if ci is None else f"{text} ± {100 * ci:.2f}"


def _accuracy_heading(seeds: list[int]) -> str:
    return "one seed, no CI" if len(seeds) < 2 else "mean ± 95% CI"


def markdown_table(results: dict[str, Any]) -> str:
    s = results["summary"]
    env = results["environment"]
    prov = results.get("provenance") or {}
    code = (f"; commit {prov['commit'][:7]}" + (" with uncommitted changes" if prov.get("dirty") else "")
            if prov.get("commit") else "")
    lines = [
        f"Command: `{results['command']}`{code}  ",
        f"Seeds: {results['seeds']}; machine: {env['machine']}, {env['cpu_count']} CPUs, torch {env['torch']}; "
        f"total wall time {results['total_wall_time_s']} s",
        "",
        f"| model | parameters | test accuracy ({_accuracy_heading(results['seeds'])}) | val accuracy (mean) "
        "| train wall time (s, mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    for role in ROLES:
        if role in s:
            r = s[role]
            lines.append(
                f"| {role} | {r['parameters']:,} | {_points(r['test_accuracy_mean'], r['test_accuracy_ci95'])} % "
                f"| {100 * r['val_accuracy_mean']:.2f} % | {r['train_wall_time_s_mean']:.1f} |"
            )
    if "distilled minus alone" in s:
        d = s["distilled minus alone"]
        per_seed = ", ".join(f"{100 * x:+.2f}" for x in d["per_seed"])
        lines += ["", f"Distilled minus alone (paired by seed): {_points(d['mean'], d['ci95'], sign=True)} "
                      f"points (per seed: {per_seed})"]
    return "\n".join(lines) + "\n"


def print_table(results: dict[str, Any]) -> None:
    """The results table in the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    s = results["summary"]
    table = Table(title=f"ktransfer demo: digits, seeds {results['seeds']}" + (" (quick: pipeline check only)" if results["quick"] else ""))
    one_seed = len(results["seeds"]) < 2
    for col in ("model", "params", "test acc." if one_seed else "test acc. ± 95% CI", "val acc.", "train s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for role in ROLES:
        if role in s:
            r = s[role]
            table.add_row(role, f"{r['parameters']:,}", f"{_points(r['test_accuracy_mean'], r['test_accuracy_ci95'])} %",
                          f"{100 * r['val_accuracy_mean']:.2f} %", f"{r['train_wall_time_s_mean']:.1f}")
    console = Console()
    console.print(table)
    if one_seed:
        console.print("one seed: no confidence interval (give --seeds 0 1 2 for one)")
    if "distilled minus alone" in s:
        d = s["distilled minus alone"]
        console.print(f"distilled minus alone, paired by seed: {_points(d['mean'], d['ci95'], sign=True)} points")
    console.print(f"total wall time: {results['total_wall_time_s']} s")
