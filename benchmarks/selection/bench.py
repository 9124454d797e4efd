"""Knowledge-selection benchmark: which kinds of teacher knowledge to transfer, fixed, random or learned.

Per task and student, a MiniLM teacher fine-tuned once on the task (cached, see
`ktransfer data prepare teacher`) is distilled into a smaller MiniLM student in these ways:
labels only; vanilla KD (response + labels); response + features (PKD-style); all five kinds
(response, features, relations, attention, labels) with fixed equal weights; random hard and
soft weights; the actor-critic selector, soft and hard, deciding every step (single-phase) or
once per phase of 10 steps (multi-phase). Every variant of a seed starts from the same student
initialisation and sees the same batches. The test split is scored once per run, with the
checkpoint that was best on validation (the only tuning signal).

Each finished run writes its own JSON at once and is skipped when the benchmark starts again,
so a killed benchmark continues where it stopped.

    python benchmarks/selection/bench.py --quick            # README table: tweets, 2-layer student, 3 seeds
    python benchmarks/selection/bench.py                    # every task x student (GPU, or several CPU sittings)

Writes benchmarks/results/selection.json, benchmarks/selection/results/selection.md and weights.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the harness
from harness import grid, provenance  # noqa: E402
from harness.aggregate import aggregate_provenance, ci_nan, paired_nan  # noqa: E402
from harness.cli import Benchmark  # noqa: E402
from harness.cli import main as harness_main  # noqa: E402
from harness.cli import threads_per_worker_env  # noqa: E402
from harness.grid import Unit  # noqa: E402
from harness.report import save_figure  # noqa: E402
CONFIGS = ROOT / "configs" / "text"

# The kinds of knowledge, each a knowledge term of the library. Base weights put the terms on
# comparable scales at the start of training; selectors multiply them by their choice in [0, 1].
TERMS: dict[str, dict[str, Any]] = {
    "response": {"type": "response", "divergence": "forward_kl", "temperature": 2.0, "weight": 1.0},
    "feature": {"type": "feature", "layer_map": "uniform", "loss": "mse", "weight": 1.0},
    "relation": {"type": "relation", "variant": "token", "path": "attention.self.value", "relation_heads": 12,
                 "layer_map": "last", "weight": 1.0},
    "attention": {"type": "attention", "layer_map": "uniform", "path": "attention.self", "weight": 1.0},
    "labels": {"type": "labels", "weight": 1.0},
}
ALL = ["response", "feature", "relation", "attention", "labels"]
AC = {"type": "actor_critic", "heldout_examples": 64, "student_representation": "bert.pooler",
      "teacher_representation": "bert.pooler"}
VARIANTS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "labels_only": (["labels"], {"type": "fixed"}),
    "vanilla_kd": (["response", "labels"], {"type": "fixed"}),
    "response_features": (["response", "feature", "labels"], {"type": "fixed"}),
    "all_equal": (ALL, {"type": "fixed"}),
    "random_hard": (ALL, {"type": "random", "mode": "hard"}),
    "random_soft": (ALL, {"type": "random", "mode": "soft"}),
    "ac_soft": (ALL, {**AC, "mode": "soft", "phase_steps": 1}),
    "ac_hard": (ALL, {**AC, "mode": "hard", "phase_steps": 1}),
    "ac_soft_multi": (ALL, {**AC, "mode": "soft", "phase_steps": 10}),
    "ac_hard_multi": (ALL, {**AC, "mode": "hard", "phase_steps": 10}),
}
BASELINE = "vanilla_kd"
TASKS = {
    "tweets": {"data": {"name": "tweets", "max_length": 64, "split_seed": 0}, "score": "macro_f1"},
    "bbc_news": {"data": {"name": "bbc_news", "max_length": 256, "val_fraction": 0.1, "test_fraction": 0.2,
                          "split_seed": 0}, "score": "macro_f1"},
    "bible_paraphrase": {"data": {"name": "bible_paraphrase", "max_length": 128, "split_seed": 0}, "score": "mcc"},
}
STUDENTS = {
    "minilm-2L": {"builder": "minilm_student", "num_layers": 2, "init": "teacher_layers"},
    "minilm-3L": {"builder": "minilm_student", "num_layers": 3, "init": "teacher_layers"},
}


def sizes(quick: bool) -> dict[str, Any]:
    """Steps and batch sizes of the student runs (the quick size fits 60 minutes on 2 CPU cores)."""
    if quick:
        return {"max_steps": 150, "batch_size": 32, "eval_every": 50, "lr": 1e-4, "warmup": 15}
    return {"max_steps": 600, "batch_size": 32, "eval_every": 100, "lr": 1e-4, "warmup": 50}


def run_config(task: str, student: str, variant: str, seed: int, quick: bool) -> dict[str, Any]:
    """The whole run as a config dict (the same a YAML file would hold)."""
    names, selector = VARIANTS[variant]
    s = sizes(quick)
    return {
        "task": "classification",
        "data": dict(TASKS[task]["data"]),
        "teacher": {"builder": "cached_teacher", "config": str(CONFIGS / f"{task}_teacher.yaml")},
        "student": dict(STUDENTS[student]),
        "knowledge": [{**TERMS[n], "name": n} for n in names],
        "selector": dict(selector),
        "optim": {"name": "adamw", "lr": s["lr"], "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_steps": s["warmup"]},
        "train": {"max_steps": s["max_steps"], "batch_size": s["batch_size"], "eval_batch_size": 128,
                  "eval_every": s["eval_every"], "log_every": 5, "checkpoint_every": s["max_steps"], "seed": seed,
                  "group_by_length": True},
    }


def weights_trace(metrics_file: Path) -> dict[str, list[float]]:
    """Per logged training step, the weight each term got (from the run's metrics.jsonl)."""
    trace: dict[str, list[float]] = {"step": []}
    for line in metrics_file.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "train" and "weights" in rec:
            trace["step"].append(rec["step"])
            for k, v in rec["weights"].items():
                trace.setdefault(k, []).append(float(v))
    return trace


def run_one(task: str, student: str, variant: str, seed: int, quick: bool, scratch: Path) -> dict[str, Any]:
    """Train one student, score it on test with its best-on-validation weights, keep only the small files."""
    import torch

    from ktransfer.config import RunConfig
    from ktransfer.runner import build_model, load_data, run
    from ktransfer.scores import classification_scores, predict_classes
    from ktransfer.tasks import Task
    from ktransfer.checkpoint import load_weights

    cfg = RunConfig.from_dict(run_config(task, student, variant, seed, quick))
    run_dir = scratch / task / student / variant / f"seed-{seed}"
    t0 = time.perf_counter()
    result = run(cfg, run_dir, progress=False, overwrite=True)
    train_s = time.perf_counter() - t0
    data = load_data(cfg)
    model = build_model({k: v for k, v in cfg.student.items()}, data.info, "student")
    load_weights(model, run_dir / "best" / "model.safetensors")
    scores = {}
    for split in ("val", "test"):
        pred, true = predict_classes(model, data.get(split), Task("classification"), 128, data.collate_fn)
        scores[split] = classification_scores(pred, true, data.info["num_classes"])
    summary = json.loads((run_dir / "summary.json").read_text())
    selector_stats = None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "train" and "selector" in rec:
            selector_stats = rec["selector"]
    unit = {
        "task": task, "student": student, "variant": variant, "seed": seed, "config": cfg.to_dict(),
        "val": scores["val"], "test": scores["test"], "best_step": result.train.best_step,
        "train_wall_s": round(summary["wall_time_s"], 2), "total_wall_s": round(train_s, 2),
        "steps": summary["step"], "student_parameters": summary["student_parameters"],
        "teacher_parameters": summary["teacher_parameters"], "weights": weights_trace(run_dir / "metrics.jsonl"),
        "selector_stats": selector_stats, "torch_threads": torch.get_num_threads(),
    }
    keep = scratch.parent / "kept" / task / student / variant / f"seed-{seed}"
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "summary.json", "config.yaml", "weights.png"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, keep / name)
    if (run_dir / "final" / "policy.pt").exists():
        shutil.copy2(run_dir / "final" / "policy.pt", keep / "policy.pt")
    shutil.rmtree(run_dir)  # weights and checkpoints: 60+ MB a run
    return unit


def aggregate(units: list[dict[str, Any]], teachers: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Per (task, student, variant): mean and CI of the scores, paired differences and cost against vanilla KD."""
    cells: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]] = {}
    for u in units:
        cells.setdefault((u["task"], u["student"]), {}).setdefault(u["variant"], {})[u["seed"]] = u
    rows = []
    for (task, student), by_variant in sorted(cells.items()):
        base = by_variant.get(BASELINE, {})
        for variant in [v for v in VARIANTS if v in by_variant]:
            runs = by_variant[variant]
            seeds = sorted(runs)
            row: dict[str, Any] = {"task": task, "student": student, "variant": variant, "n": len(seeds),
                                   "seeds": seeds}
            for key in ("accuracy", "macro_f1", "mcc"):
                row[key] = ci_nan([runs[s]["test"][key] for s in seeds])
                row[f"{key}_minus_kd"] = paired_nan({s: runs[s]["test"][key] for s in seeds},
                                                    {s: b["test"][key] for s, b in base.items()})
            row["train_wall_s"] = ci_nan([runs[s]["train_wall_s"] for s in seeds])
            ratios = [runs[s]["train_wall_s"] / base[s]["train_wall_s"] for s in seeds if s in base]
            row["cost_vs_kd"] = ci_nan(ratios) if ratios else (float("nan"), float("nan"))
            row["mean_weights"] = {k: float(np.mean([np.mean(runs[s]["weights"][k]) for s in seeds]))
                                   for k in runs[seeds[0]]["weights"] if k != "step"}
            stats = [runs[s]["selector_stats"] for s in seeds if runs[s].get("selector_stats")]
            if stats:
                row["selector_stats"] = {k: float(np.mean([st[k] for st in stats])) for k in stats[0]}
            rows.append(row)
    return {"meta": meta, "teachers": teachers, "rows": rows, "units": units,
            "learned_vs_baselines": learned_vs_baselines(cells)}


LEARNED = ["ac_soft", "ac_hard", "ac_soft_multi", "ac_hard_multi"]
OTHER_BASELINES = ["all_equal", "random_soft", "random_hard", "labels_only"]


def learned_vs_baselines(cells: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Each actor-critic variant against the fixed and random baselines: paired differences of the task's score."""
    out = []
    for (task, student), by_variant in sorted(cells.items()):
        score = TASKS.get(task, {}).get("score", "macro_f1")
        for variant in [v for v in LEARNED if v in by_variant]:
            row: dict[str, Any] = {"task": task, "student": student, "variant": variant, "score": score}
            for other in [b for b in OTHER_BASELINES if b in by_variant]:
                row[other] = paired_nan({s: u["test"][score] for s, u in sorted(by_variant[variant].items())},
                                        {s: u["test"][score] for s, u in by_variant[other].items()})
            out.append(row)
    return out


def _fmt(ci: tuple[float, float]) -> str:
    m, h = ci
    return f"{m * 100:.1f} ± {h * 100:.1f}" if not math.isnan(h) else f"{m * 100:.1f}"


def _fmt_diff(ci: tuple[float, float]) -> str:
    m, h = ci
    if math.isnan(m):
        return "—"
    mark = "" if math.isnan(h) or abs(m) <= h else " *"
    return f"{m * 100:+.1f} ± {h * 100:.1f}{mark}" if not math.isnan(h) else f"{m * 100:+.1f}"


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [f"Command: `{meta['command']}`; {meta['machine']}; torch {meta['torch']}, transformers "
             f"{meta['transformers']}, Python {meta['python']}; {provenance.code_line(meta.get('provenance'))}; seeds {meta['seeds']}; {meta['steps']} steps of "
             f"batch {meta['batch_size']}; benchmark wall time {meta['wall_time_min']:.0f} min over {len(meta.get('sittings', []))} sitting(s) (teacher "
             f"included when the benchmark trained it). Test scores in %, mean ± 95% t-interval over seeds, with the "
             "checkpoint best on validation; differences are paired by seed against vanilla KD (* = the interval "
             "excludes 0); cost = training wall time / vanilla KD's.", ""]
    for task, info in result["teachers"].items():
        lines.append(f"Teacher ({task}): MiniLM-L6 fine-tuned, {info['parameters'] / 1e6:.1f}M parameters, test "
                     f"accuracy {info['test']['accuracy'] * 100:.1f}, macro-F1 {info['test']['macro_f1'] * 100:.1f}, "
                     f"MCC {info['test']['mcc'] * 100:.1f}; trained in {info['train_wall_s'] / 60:.1f} min "
                     f"({'this invocation' if info['trained_now'] else 'cached'}).")
    lines += ["", "| task | student | variant | accuracy | macro-F1 | MCC | Δ acc vs KD | Δ macro-F1 vs KD | "
              "Δ MCC vs KD | cost vs KD | mean weight (resp/feat/rel/att/lab) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        w = r["mean_weights"]
        weights = "/".join(f"{w[k]:.2f}" if k in w else "–" for k in ALL)
        cost = "1.00" if r["variant"] == BASELINE else (f"{r['cost_vs_kd'][0]:.2f}" if not math.isnan(r["cost_vs_kd"][0])
                                                         else "—")
        diff = (lambda k: "—" if r["variant"] == BASELINE else _fmt_diff(r[f"{k}_minus_kd"]))
        lines.append(f"| {r['task']} | {r['student']} | {r['variant']} | {_fmt(r['accuracy'])} | {_fmt(r['macro_f1'])} | "
                     f"{_fmt(r['mcc'])} | {diff('accuracy')} | {diff('macro_f1')} | {diff('mcc')} | {cost} | "
                     f"{weights} |")
    versus = result.get("learned_vs_baselines") or []
    if versus:
        others = [b for b in OTHER_BASELINES if any(b in r for r in versus)]
        lines += ["", "The learned selector against the fixed and random baselines: paired difference of the task's "
                  "score (macro-F1, or MCC for paraphrase) in points, learned minus baseline (* = the interval "
                  "excludes 0).", "", "| task | student | variant | " + " | ".join(f"vs {b}" for b in others) + " |",
                  "|---|---|---|" + "---:|" * len(others)]
        for r in versus:
            lines.append(f"| {r['task']} | {r['student']} | {r['variant']} | "
                         + " | ".join(_fmt_diff(r[b]) if b in r else "—" for b in others) + " |")
    learned = [r for r in result["rows"] if r.get("selector_stats")]
    if learned:
        lines += ["", "The actor-critic's own cost (mean per run): held-out evaluations, policy updates and the seconds "
                  "they took (measured inside the selector, so other jobs on the machine inflate it less than wall time).",
                  "", "| task | student | variant | decisions | held-out evaluations | updates | selector seconds | "
                  "share of training time |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in learned:
            st = r["selector_stats"]
            lines.append(f"| {r['task']} | {r['student']} | {r['variant']} | {st['decisions']:.0f} | "
                         f"{st['heldout_evals']:.0f} | {st['updates']:.0f} | {st['seconds']:.1f} | "
                         f"{st['seconds'] / r['train_wall_s'][0] * 100:.0f}% |")
    return "\n".join(lines) + "\n"


def plot_weights(result: dict[str, Any], path: Path) -> None:
    """Each learned (and random soft) variant: the weight of every knowledge kind over training, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ["ac_soft", "ac_hard", "ac_soft_multi", "ac_hard_multi", "random_soft"]
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for u in result["units"]:
        if u["variant"] in shown:
            groups.setdefault((u["task"], u["student"]), {}).setdefault(u["variant"], []).append(u)
    if not groups:
        return
    fig, axes = plt.subplots(len(groups), len(shown), figsize=(3.2 * len(shown), 2.6 * len(groups)), squeeze=False,
                             sharey=True)
    for i, ((task, student), by_variant) in enumerate(sorted(groups.items())):
        for j, variant in enumerate(shown):
            ax = axes[i][j]
            units = by_variant.get(variant, [])
            if units:
                steps = np.asarray(units[0]["weights"]["step"])
                for k in ALL:
                    if k in units[0]["weights"]:
                        ax.plot(steps, np.mean([u["weights"][k] for u in units], axis=0), label=k)
            ax.set_title(f"{task} {student}\n{variant} ({len(units)} seeds)", fontsize=8)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("step", fontsize=8)
    axes[0][0].set_ylabel("weight chosen")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def recorded_teacher(record: Path, config: Path, need_model: bool) -> dict[str, Any] | None:
    """The teacher's record; None when there is none, or when the model is needed and this machine's cache lacks
    it (a fresh machine holding the committed record: the teacher is trained again, which is said here, and its
    record replaced by that training's)."""
    if not record.exists():
        return None
    if need_model:
        from ktransfer.teachers import cached_teacher_dir

        try:
            cached_teacher_dir(config)
        except FileNotFoundError:
            print(f"{record.name}: recorded, but its teacher is not in this machine's cache; training it again, and "
                  "the record is replaced by this training's", file=sys.stderr, flush=True)
            return None
    return grid.read_unit(record)


def units_to_run(bench: Benchmark, args: argparse.Namespace) -> bool:
    """Whether any unit of the grid has no result yet (else a sitting trains nothing, its teachers included)."""
    return not all(grid.unit_path(bench.results(args), u).is_file() for u in bench.units(args))


def prepare_teacher(task: str, out: Path, need_model: bool = True) -> dict[str, Any]:
    """The cached teacher of `task` (trained now if absent, or if `need_model` and this machine lacks it) and its
    test scores; recorded once in `out`."""
    record, config = out / f"teacher-{task}.json", CONFIGS / f"{task}_teacher.yaml"
    recorded = recorded_teacher(record, config, need_model)
    if recorded is not None:
        return recorded
    from ktransfer.config import RunConfig
    from ktransfer.runner import load_data
    from ktransfer.scores import classification_scores, predict_classes
    from ktransfer.tasks import Task
    from ktransfer.teachers import cached_teacher_dir, load_cached_teacher, teacher_key
    from ktransfer.teachers import prepare_teacher as train_teacher

    try:
        cached_teacher_dir(config)
        trained_now = False
    except FileNotFoundError:
        trained_now = True
    t0 = time.perf_counter()
    run_dir = train_teacher(config)
    elapsed = time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = RunConfig.from_yaml(config)
    data = load_data(cfg)
    model = load_cached_teacher(config, data.info["num_classes"])
    pred, true = predict_classes(model, data.test, Task("classification"), 128, data.collate_fn)
    info = {"task": task, "key": teacher_key(config), "config": str(config.relative_to(ROOT)),
            "test": classification_scores(pred, true, data.info["num_classes"]), "best_val": summary["best_val"],
            "train_wall_s": summary["wall_time_s"], "prepare_wall_s": round(elapsed, 2), "trained_now": trained_now,
            "parameters": summary["student_parameters"], "sizes": data.info["sizes"]}
    return grid.write_unit(record, info)


class Selection(Benchmark):
    """The selection benchmark on the harness: one unit per task, student, variant and seed, each
    `<task>-<student>-<variant>-s<seed>.json` under OUT/<size>/units/."""

    script = Path(__file__)
    description = globals()["__doc__"].splitlines()[0]
    context_keys = ("command", "machine", "torch", "transformers", "python", "provenance", "sittings",
                    "wall_time_min")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--quick", action="store_true", help="tweets, 2-layer student, 150 steps (< 60 min on 2 CPUs)")
        p.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS))
        p.add_argument("--students", nargs="+", default=None, choices=list(STUDENTS))
        p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
        p.add_argument("--out", default=str(HERE / "runs"), help="per-run JSONs (resumable) and the kept small files")
        p.add_argument("--scratch", default=None, help="run directories while training (default: OUT/scratch)")
        p.add_argument("--report-dir", default=None, help="write the JSON, table and plot here instead")

    def setup(self, args: argparse.Namespace) -> None:
        args.size = "quick" if args.quick else "full"
        args.tasks = args.tasks or (["tweets"] if args.quick else list(TASKS))
        args.students = args.students or (["minilm-2L"] if args.quick else list(STUDENTS))
        args.out_size = Path(args.out) / args.size
        self.results(args).mkdir(parents=True, exist_ok=True)

    def results(self, args: argparse.Namespace) -> Path:
        return args.out_size / "units"

    def state(self, args: argparse.Namespace) -> Path:
        return args.out_size  # sittings.jsonl: one line per invocation that trained runs

    def prepare(self, args: argparse.Namespace) -> None:
        if units_to_run(self, args):
            for task in args.tasks:  # before any worker starts: trained once
                prepare_teacher(task, args.out_size)

    def units(self, args: argparse.Namespace) -> list[Unit]:
        return [Unit(f"{c['task']}-{c['student']}-{c['variant']}-s{c['seed']}", c)
                for c in grid.product(seed=range(args.seeds), task=args.tasks, student=args.students,
                                      variant=args.variants)]

    def run_unit(self, unit: Unit, args: argparse.Namespace) -> dict[str, Any]:
        scratch = Path(args.scratch) if args.scratch else args.out_size / "scratch"
        result = run_one(unit.key["task"], unit.key["student"], unit.key["variant"], unit.key["seed"], args.quick,
                         scratch)
        print(f"{unit.name}: test acc {result['test']['accuracy']:.3f} macro-F1 {result['test']['macro_f1']:.3f} "
              f"MCC {result['test']['mcc']:.3f} ({result['train_wall_s']:.0f}s)", flush=True)
        return result

    def worker_env(self, args: argparse.Namespace) -> dict[str, str]:
        return threads_per_worker_env(args)

    def context(self, args: argparse.Namespace) -> dict[str, Any]:
        import torch
        import transformers

        from harness.sittings import read_sittings

        sittings = read_sittings(args.out_size / "sittings.jsonl")
        made_by = provenance.record()
        return {"command": made_by["command"], "provenance": made_by,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
                           + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version(), "sittings": sittings,
                "wall_time_min": sum(x["wall_time_min"] for x in sittings)}

    def aggregate(self, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any] | None:
        teachers = {task: prepare_teacher(task, args.out_size, need_model=False) for task in args.tasks}
        todo = self.units(args)
        wanted = {u.name for u in todo}
        units = [grid.read_unit(q) for q in sorted(self.results(args).glob("*.json"))]
        units = [u for u in units if f"{u['task']}-{u['student']}-{u['variant']}-s{u['seed']}" in wanted]
        if not units:
            return None
        s = sizes(args.quick)
        meta = {**context, "provenance": aggregate_provenance([*units, *teachers.values()], context),
                "seeds": list(range(args.seeds)), "steps": s["max_steps"], "batch_size": s["batch_size"],
                "run_time_total_min": sum(u["train_wall_s"] for u in units) / 60,
                "variants": {k: {"terms": v[0], "selector": v[1]} for k, v in VARIANTS.items()}, "terms": TERMS,
                "tasks": {t: TASKS[t] for t in args.tasks}, "students": {st: STUDENTS[st] for st in args.students},
                "complete": len(units) == len(todo)}
        return aggregate(units, teachers, meta)

    def outputs(self, result: dict[str, Any], args: argparse.Namespace) -> dict[Path, Any]:
        suffix = "" if args.quick else "-full"
        json_dir = Path(args.report_dir) if args.report_dir else ROOT / "benchmarks" / "results"
        table_dir = Path(args.report_dir) if args.report_dir else HERE / "results"
        return {json_dir / f"selection{suffix}.json": result, table_dir / f"selection{suffix}.md": markdown(result),
                table_dir / f"weights{suffix}.png": lambda path: plot_weights(result, path)}

    def summary(self, result: dict[str, Any]) -> str:
        return markdown(result)


def main(argv: list[str] | None = None) -> int:
    return harness_main(Selection(), argv)


if __name__ == "__main__":
    sys.exit(main())
