"""Knowledge selection at a converged budget: the selection benchmark's variants trained until validation stops improving.

The variants, tasks, students and knowledge terms are those of `bench.py` (the 150-step study).
Here the fine-tuned MiniLM teacher runs once per task: its logits and the hidden states, value
projections, pooler output and attention maps that the variants read of it (mapped layers of every
student asked for) go into a teacher output store, a unit of its own cached under
OUT/<size>/stores/. Every student then trains from the store with no teacher in memory, is evaluated
on validation every `eval_every` steps, stops after `patience` evaluations without improvement (or at
`max_steps`), and is scored once on test with its best-on-validation checkpoint. The table sets each
variant beside its 150-step result (benchmarks/results/selection.json), paired by seed.

Each finished unit (store or student) writes its JSON at once and is skipped when the benchmark starts
again, so a killed benchmark continues where it stopped.

    python benchmarks/selection/converged.py --quick --jobs 2   # tweets, 2-layer student, 1 seed (about 60 min, 2 cores)
    python benchmarks/selection/converged.py --full --jobs 2    # every task x student, 3 seeds (GPU, or several sittings)

Writes benchmarks/results/selection_converged[-full].json and benchmarks/selection/results/selection_converged[-full].md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the harness
from harness import grid, provenance  # noqa: E402
from harness.aggregate import aggregate_provenance, ci_nan, paired_nan  # noqa: E402
from harness.cli import Benchmark  # noqa: E402
from harness.cli import main as harness_main  # noqa: E402
from harness.cli import threads_per_worker_env  # noqa: E402
from harness.grid import Unit  # noqa: E402
from harness.reproduce import load_study  # noqa: E402
from harness.sittings import ran_by  # noqa: E402

SELECTION = load_study("selection/bench.py")  # the 150-step study: its variants, terms, tasks and students
TERMS: dict[str, dict[str, Any]] = SELECTION.TERMS
VARIANTS: dict[str, tuple[list[str], dict[str, Any]]] = SELECTION.VARIANTS
ALL: list[str] = SELECTION.ALL
BASELINE: str = SELECTION.BASELINE
TASKS: dict[str, dict[str, Any]] = dict(SELECTION.TASKS)  # a task may name its teacher's config: "teacher_config"
STUDENTS: dict[str, dict[str, Any]] = dict(SELECTION.STUDENTS)
CONFIGS: Path = SELECTION.CONFIGS
STEP_150 = ROOT / "benchmarks" / "results" / "selection.json"

# quick: fits about 60 minutes on 2 CPU cores with --jobs 2 (most runs stop before the cap);
# full: every task and student, 3 seeds, a cap 5x the quick one.
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"seeds": 1, "tasks": ["tweets"], "students": ["minilm-2L"], "max_steps": 600, "eval_every": 50,
              "patience": 3, "batch_size": 32, "lr": 1e-4, "warmup": 30, "feature_values": "float16",
              "store_batch_size": 128},
    "full": {"seeds": 3, "tasks": list(SELECTION.TASKS), "students": list(SELECTION.STUDENTS), "max_steps": 3000,
             "eval_every": 100, "patience": 5, "batch_size": 32, "lr": 1e-4, "warmup": 100, "feature_values": "float16",
             "store_batch_size": 128},
}


def teacher_config(task: str) -> Path:
    """The run config that fine-tunes the task's teacher (trained once, cached)."""
    return Path(TASKS[task].get("teacher_config") or CONFIGS / f"{task}_teacher.yaml")


def live_config(task: str, student: str, knowledge: list[dict[str, Any]], selector: dict[str, Any]) -> dict[str, Any]:
    """A run config with the live teacher: what the store is built from."""
    return {"task": "classification", "data": dict(TASKS[task]["data"]),
            "teacher": {"builder": "cached_teacher", "config": str(teacher_config(task))},
            "student": dict(STUDENTS[student]), "knowledge": knowledge, "selector": dict(selector),
            "train": {"eval_batch_size": 128, "group_by_length": True}}


def run_config(task: str, student: str, variant: str, seed: int, size: dict[str, Any], store: Path) -> dict[str, Any]:
    """One student run, reading the teacher from `store`, as a config dict (the same a YAML file would hold)."""
    names, selector = VARIANTS[variant]
    steps = size["max_steps"]
    return {
        "task": "classification",
        "data": dict(TASKS[task]["data"]),
        "teacher": {"store": str(store)},
        "student": dict(STUDENTS[student]),
        "knowledge": [{**TERMS[n], "name": n} for n in names],
        "selector": dict(selector),
        "optim": {"name": "adamw", "lr": size["lr"], "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_steps": size["warmup"]},
        "train": {"max_steps": steps, "batch_size": size["batch_size"], "eval_batch_size": 128,
                  "eval_every": size["eval_every"], "patience": size["patience"], "log_every": 5,
                  "checkpoint_every": steps, "seed": seed, "group_by_length": True},
    }


def store_name(task: str, students: list[str]) -> str:
    """The store unit of a task, for the students it serves (their mapped layers differ)."""
    return f"store-{task}-{'+'.join(sorted(students))}"


def build_task_store(task: str, students: list[str], size: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The task's teacher outputs and every teacher internal that any variant of any of `students` reads."""
    from ktransfer.config import RunConfig
    from ktransfer.runner import build_model, load_data
    from ktransfer.store import TeacherStore
    from ktransfer.store.build import build_store
    from ktransfer.store.reads import captures_read_by

    base = RunConfig.from_dict(live_config(task, students[0], [{"type": "labels"}], {"type": "fixed"}))
    data = load_data(base)
    teacher = build_model(base.teacher, data.info, "teacher")
    hidden: dict[str, None] = {}
    attentions: dict[str, None] = {}
    for student in students:
        model = build_model(STUDENTS[student], data.info, "student")
        for names, selector in VARIANTS.values():
            h, a = captures_read_by([{**TERMS[n], "name": n} for n in names], selector, model, teacher)
            hidden.update(dict.fromkeys(h))
            attentions.update(dict.fromkeys(a))
    del teacher
    report = build_store(base, folder, hidden=list(hidden), attentions=list(attentions),
                         feature_values=size["feature_values"], batch_size=size["store_batch_size"])
    store = TeacherStore.open(folder)
    return {"kind": "store", "task": task, "students": students, "directory": str(folder),
            "hidden": list(hidden), "attentions": list(attentions), "feature_values": size["feature_values"],
            "examples": store.examples, "bytes": sum(int(s["bytes"]) for s in store.manifest["shards"]),
            "computed": report.computed, "build_wall_s": round(report.total_s, 2),
            "teacher_forward_s": round(report.forward_s, 2)}


def val_curve(metrics_file: Path, metric: str) -> list[list[float]]:
    """[step, validation metric] of every evaluation of a run."""
    out = []
    for line in metrics_file.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "val" and metric in rec:
            out.append([rec["step"], float(rec[metric])])
    return out


def run_student(task: str, student: str, variant: str, seed: int, size: dict[str, Any], store: Path,
                scratch: Path) -> dict[str, Any]:
    """Train one student from the store until validation stops improving; score it on test with its best weights."""
    import torch

    from ktransfer.checkpoint import load_weights
    from ktransfer.config import RunConfig
    from ktransfer.runner import build_model, load_data, run
    from ktransfer.scores import classification_scores, predict_classes
    from ktransfer.tasks import Task

    cfg = RunConfig.from_dict(run_config(task, student, variant, seed, size, store))
    run_dir = scratch / task / student / variant / f"seed-{seed}"
    t0 = time.perf_counter()
    result = run(cfg, run_dir, progress=False, overwrite=True)
    total_s = time.perf_counter() - t0
    data = load_data(cfg)
    model = build_model(dict(cfg.student), data.info, "student")
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
        "steps": summary["step"], "stopped_early": bool(result.train.stopped_early),
        "at_cap": summary["step"] >= size["max_steps"] and not result.train.stopped_early,
        "val_curve": val_curve(run_dir / "metrics.jsonl", cfg.train.metric), "metric": cfg.train.metric,
        "train_wall_s": round(summary["wall_time_s"], 2), "total_wall_s": round(total_s, 2),
        "student_parameters": summary["student_parameters"], "weights": SELECTION.weights_trace(run_dir / "metrics.jsonl"),
        "selector_stats": selector_stats, "torch_threads": torch.get_num_threads(),
    }
    keep = scratch.parent / "kept" / task / student / variant / f"seed-{seed}"
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "summary.json", "config.yaml"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, keep / name)
    shutil.rmtree(run_dir)  # weights and checkpoints: 60+ MB a run
    return unit


def prepare_teacher(task: str, out: Path, need_model: bool = True) -> dict[str, Any]:
    """The task's cached teacher (trained now if absent, or if `need_model` and this machine lacks it), recorded
    once in `out`: with its test scores for the benchmark's own tasks (as the 150-step study records them), with its
    config only for another task."""
    if "teacher_config" not in TASKS[task]:
        return SELECTION.prepare_teacher(task, out, need_model)
    record, config = out / f"teacher-{task}.json", teacher_config(task)
    recorded = SELECTION.recorded_teacher(record, config, need_model)
    if recorded is not None:
        return recorded
    from ktransfer.teachers import cached_teacher_dir
    from ktransfer.teachers import prepare_teacher as train_teacher

    try:
        cached_teacher_dir(config)
        trained_now = False
    except FileNotFoundError:
        trained_now = True
    train_teacher(config)
    return grid.write_unit(record, {"task": task, "config": str(config), "trained_now": trained_now})


# ------------------------------------------------------------------------------------------- aggregation
def score_of(task: str) -> str:
    return TASKS.get(task, {}).get("score", "macro_f1")


def aggregate(units: list[dict[str, Any]], stores: list[dict[str, Any]], step150: list[dict[str, Any]],
              teachers: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The 150-step study's aggregation of these runs, plus per variant: steps, best step, early stops, and the
    paired difference (by seed) of the task's score against the same variant after 150 steps."""
    result = SELECTION.aggregate(units, teachers, meta)
    cells: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for u in units:
        cells.setdefault((u["task"], u["student"], u["variant"]), {})[u["seed"]] = u
    before: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for u in step150:
        before.setdefault((u["task"], u["student"], u["variant"]), {})[u["seed"]] = u
    for row in result["rows"]:
        key = (row["task"], row["student"], row["variant"])
        runs, score = cells[key], score_of(row["task"])
        old = before.get(key, {})
        row["score"] = score
        row["steps"] = ci_nan([runs[s]["steps"] for s in row["seeds"]])
        row["best_step"] = ci_nan([runs[s]["best_step"] or 0 for s in row["seeds"]])
        row["stopped_early"] = sum(bool(runs[s]["stopped_early"]) for s in row["seeds"])
        row["at_cap"] = sum(bool(runs[s]["at_cap"]) for s in row["seeds"])
        row["step150"] = ci_nan([u["test"][score] for u in old.values()]) if old else (float("nan"), float("nan"))
        row["step150_n"] = len(old)
        row["minus_step150"] = paired_nan({s: runs[s]["test"][score] for s in row["seeds"]},
                                          {s: u["test"][score] for s, u in old.items()})
    result["stores"] = stores
    return result


def _fmt(ci: tuple[float, float]) -> str:
    return "—" if math.isnan(ci[0]) else SELECTION._fmt(ci)


def markdown(result: dict[str, Any]) -> str:
    meta, size = result["meta"], result["meta"]["size"]
    lines = [f"{ran_by(meta.get('sittings', []), meta['command'])}; {meta['machine']}; torch {meta['torch']}, transformers {meta['transformers']}, "
             f"Python {meta['python']}; {provenance.code_line(meta.get('provenance'))}; seeds {meta['seeds']}; batch "
             f"{size['batch_size']}, validation every {size['eval_every']} steps, stop after {size['patience']} "
             f"evaluations without improvement or at {size['max_steps']} steps; teacher read from a store "
             f"({size['feature_values']} hidden states and attention maps); benchmark wall time "
             f"{meta['wall_time_min']:.0f} min over {len(meta.get('sittings', []))} sitting(s). Test scores in %, mean ± "
             "95% t-interval over seeds, with the checkpoint best on validation; differences are paired by seed (* = the "
             "interval excludes 0): against vanilla KD at the converged budget, and against the same variant after 150 "
             f"steps ({meta.get('step150_source', 'no 150-step results')}).", ""]
    for s in result.get("stores", []):
        lines.append(f"Store ({s['task']}, for {', '.join(s['students'])}): {s['examples']} examples, "
                     f"{s['bytes'] / 2**20:.0f} MiB, {len(s['hidden'])} hidden states and {len(s['attentions'])} "
                     f"attention maps per example; built in {s['build_wall_s'] / 60:.1f} min.")
    lines += ["", "| task | student | variant | score | converged | 150 steps | Δ vs 150 steps | Δ vs KD | steps | "
              "best step | stopped early | cost vs KD | mean weight (resp/feat/rel/att/lab) |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        score = r["score"]
        w = r["mean_weights"]
        weights = "/".join(f"{w[k]:.2f}" if k in w else "–" for k in ALL)
        vs_kd = "—" if r["variant"] == BASELINE else SELECTION._fmt_diff(r[f"{score}_minus_kd"])
        cost = "1.00" if r["variant"] == BASELINE else ("—" if math.isnan(r["cost_vs_kd"][0])
                                                        else f"{r['cost_vs_kd'][0]:.2f}")
        lines.append(f"| {r['task']} | {r['student']} | {r['variant']} | {score} | {_fmt(r[score])} | "
                     f"{_fmt(r['step150'])} | {SELECTION._fmt_diff(r['minus_step150'])} | {vs_kd} | "
                     f"{r['steps'][0]:.0f} | {r['best_step'][0]:.0f} | {r['stopped_early']}/{r['n']} | {cost} | "
                     f"{weights} |")
    versus = result.get("learned_vs_baselines") or []
    if versus:
        others = [b for b in SELECTION.OTHER_BASELINES if any(b in r for r in versus)]
        lines += ["", "The learned selector against the fixed and random baselines at the converged budget: paired "
                  "difference of the task's score in points, learned minus baseline (* = the interval excludes 0).", "",
                  "| task | student | variant | " + " | ".join(f"vs {b}" for b in others) + " |",
                  "|---|---|---|" + "---:|" * len(others)]
        for r in versus:
            lines.append(f"| {r['task']} | {r['student']} | {r['variant']} | "
                         + " | ".join(SELECTION._fmt_diff(r[b]) if b in r else "—" for b in others) + " |")
    return "\n".join(lines) + "\n"


def read_step150(path: Path) -> list[dict[str, Any]]:
    """The unit results of the 150-step study's aggregate (none when the file is absent)."""
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("units", []))


# ------------------------------------------------------------------------------------------- the benchmark
class Converged(Benchmark):
    """The converged-budget selection benchmark on the harness: a store unit per task, then one student unit per
    task, student, variant and seed (`<task>-<student>-<variant>-s<seed>.json`), under
    RESULTS/selection_converged/<size>/; stores and scratch runs under OUT/<size>/."""

    script = Path(__file__)
    description = globals()["__doc__"].splitlines()[0]
    context_keys = ("command", "machine", "torch", "transformers", "python", "provenance", "sittings",
                    "wall_time_min")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.set_defaults(seeds=None)  # default: the size's seeds
        size = p.add_mutually_exclusive_group()
        size.add_argument("--quick", action="store_true", help="tweets, 2-layer student, 1 seed, about 60 min on 2 "
                                                               "cores with --jobs 2 (the default size)")
        size.add_argument("--full", action="store_true", help="every task x student, 3 seeds")
        p.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS))
        p.add_argument("--students", nargs="+", default=None, choices=list(STUDENTS))
        p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
        p.add_argument("--out", default=str(HERE / "runs-converged"), help="stores, scratch runs and kept small "
                                                                           "files (not committed)")
        p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                       help="unit results, the teachers' records and the sittings log, under "
                            "RESULTS/selection_converged/<size>/ (committed as they land; resumable)")
        p.add_argument("--step150", default=str(STEP_150), help="the 150-step study's aggregate to compare with")
        p.add_argument("--report-dir", default=None, help="write the JSON and table here instead")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=JSON",
                       help="change a size setting, e.g. --set max_steps=1000 (recorded in the results)")

    def setup(self, args: argparse.Namespace) -> None:
        args.size_name = "full" if args.full else "quick"
        args.size = copy.deepcopy(SIZES[args.size_name])
        for item in args.sets:
            key, _, value = item.partition("=")
            if key not in args.size:
                raise SystemExit(f"--set {key}: unknown size setting; valid: {', '.join(sorted(args.size))}")
            args.size[key] = json.loads(value)
        if args.seeds is None:
            args.seeds = args.size["seeds"]
        if args.seeds < 1:
            raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")
        args.tasks = args.tasks or [t for t in args.size["tasks"] if t in TASKS]
        args.students = args.students or [s for s in args.size["students"] if s in STUDENTS]
        args.out_size = Path(args.out) / args.size_name
        self.results(args).mkdir(parents=True, exist_ok=True)

    def results(self, args: argparse.Namespace) -> Path:
        return Path(args.results) / "selection_converged" / args.size_name

    def prepare(self, args: argparse.Namespace) -> None:
        if SELECTION.units_to_run(self, args):
            for task in args.tasks:  # before any worker starts: trained once
                prepare_teacher(task, self.results(args))

    def store_dir(self, task: str, args: argparse.Namespace) -> Path:
        return args.out_size / "stores" / store_name(task, args.students)

    def units(self, args: argparse.Namespace) -> list[Unit]:
        stores = [Unit(store_name(t, args.students), {"kind": "store", "task": t},
                       keeps=(str(self.store_dir(t, args)),)) for t in args.tasks]
        students = [Unit(f"{c['task']}-{c['student']}-{c['variant']}-s{c['seed']}", {"kind": "student", **c},
                         (store_name(c["task"], args.students),))
                    for c in grid.product(seed=range(args.seeds), task=args.tasks, student=args.students,
                                          variant=args.variants)]
        return stores + students

    def run_unit(self, unit: Unit, args: argparse.Namespace) -> dict[str, Any]:
        key = unit.key
        if key["kind"] == "store":
            result = build_task_store(key["task"], list(args.students), args.size, self.store_dir(key["task"], args))
            print(f"{unit.name}: {result['bytes'] / 2**20:.0f} MiB in {result['build_wall_s']:.0f}s", flush=True)
            return result
        result = run_student(key["task"], key["student"], key["variant"], key["seed"], args.size,
                             self.store_dir(key["task"], args), args.out_size / "scratch")
        print(f"{unit.name}: test macro-F1 {result['test']['macro_f1']:.3f} after {result['steps']} steps (best "
              f"{result['best_step']}, {'stopped early' if result['stopped_early'] else 'at the cap'}, "
              f"{result['train_wall_s']:.0f}s)", flush=True)
        return result

    def worker_env(self, args: argparse.Namespace) -> dict[str, str]:
        return threads_per_worker_env(args)

    def context(self, args: argparse.Namespace) -> dict[str, Any]:
        import torch
        import transformers

        from harness.sittings import read_sittings

        sittings = read_sittings(self.results(args) / "sittings.jsonl")
        made_by = provenance.record()
        return {"command": made_by["command"], "provenance": made_by,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
                           + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version(), "sittings": sittings,
                "wall_time_min": sum(x["wall_time_min"] for x in sittings)}

    def aggregate(self, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any] | None:
        teachers = {task: prepare_teacher(task, self.results(args), need_model=False) for task in args.tasks}
        todo = self.units(args)
        done = grid.read_units(self.results(args), todo)
        units = [u for u in done if u.get("variant") is not None]
        stores = [u for u in done if u.get("kind") == "store"]
        if not units:
            return None
        step150_path = Path(args.step150)
        meta = {**context, "provenance": aggregate_provenance([*done, *teachers.values()], context),
                "seeds": list(range(args.seeds)), "size_name": args.size_name, "size": args.size,
                "run_time_total_min": sum(u["train_wall_s"] for u in units) / 60,
                "variants": {k: {"terms": v[0], "selector": v[1]} for k, v in VARIANTS.items()}, "terms": TERMS,
                "tasks": {t: TASKS[t] for t in args.tasks}, "students": {st: STUDENTS[st] for st in args.students},
                "step150_source": (str(step150_path.relative_to(ROOT)) if step150_path.is_relative_to(ROOT)
                                   else str(step150_path)) if step150_path.is_file() else "no 150-step results",
                "complete": len(done) == len(todo)}
        return aggregate(units, stores, read_step150(step150_path), teachers, meta)

    def outputs(self, result: dict[str, Any], args: argparse.Namespace) -> dict[Path, Any]:
        suffix = "" if args.size_name == "quick" else "-full"
        json_dir = Path(args.report_dir) if args.report_dir else ROOT / "benchmarks" / "results"
        table_dir = Path(args.report_dir) if args.report_dir else HERE / "results"
        return {json_dir / f"selection_converged{suffix}.json": result,
                table_dir / f"selection_converged{suffix}.md": markdown(result)}

    def summary(self, result: dict[str, Any]) -> str:
        return markdown(result)


def main(argv: list[str] | None = None) -> int:
    return harness_main(Converged(), argv)


if __name__ == "__main__":
    sys.exit(main())
