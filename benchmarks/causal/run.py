"""Causal LM example: SmolLM2-135M distilled on-policy with backward KL, against the student on the text alone.

Three ways to train the same 4-layer Llama student (same data, steps and seed), per seed:

  student_alone   configs/causal/smollm2_student_alone.yaml: next-token cross-entropy on the text
  onpolicy        configs/causal/smollm2_onpolicy.yaml: on-policy backward KL from the random student
  onpolicy_warm   the student on the text alone for half the steps (its own run, `warm-s<seed>`), then
                  the on-policy config for the other half: the warm start practitioners use

Each run's best student (by validation perplexity) is evaluated on the held-out test articles
(perplexity, and teacher_kl = KL(teacher || student) per token). Table: mean and 95% t-interval over
seeds, and the paired difference of each method against the student alone. A run whose directory
holds a finished summary and a test evaluation is skipped; a killed run resumes from its newest
checkpoint. One intra-op thread per process: on the 2-core machine two threads were about 9x
slower than one under contention; `--jobs 2` runs two workers side by side.

    ktransfer data prepare bbc-news && ktransfer data prepare smollm2
    python benchmarks/causal/run.py --jobs 2        # 3 seeds x 3 methods, resumable, then the table
    python benchmarks/causal/run.py --table         # only rewrite the table from finished runs

Writes benchmarks/causal/results/causal.json (every run, the machine, the wall time per sitting)
and the table into benchmarks/causal/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
import provenance  # noqa: E402  (benchmarks/provenance.py: commit, command and machine of every result)
CONFIGS = {"onpolicy": "configs/causal/smollm2_onpolicy.yaml",
           "student_alone": "configs/causal/smollm2_student_alone.yaml"}
METHODS = {"student_alone": "student on the text alone (cross-entropy)",
           "onpolicy": "on-policy backward KL from the random student (student samples + text, lambda 0.5)",
           "onpolicy_warm": "the student alone for half the steps, then on-policy backward KL"}
BASELINE = "student_alone"
TABLE_START, TABLE_END = "<!-- table:start -->", "<!-- table:end -->"


def finished(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("finished", False) \
        and (run_dir / "eval-test.json").is_file()


def run_config(method: str, seed: int, runs_root: Path) -> Any:
    """The RunConfig of one run: a committed config with the seed (and, warm-started, the steps and weights) set."""
    from ktransfer.config import RunConfig

    over = [f"train.seed={seed}"]
    if method == "onpolicy_warm":
        full = RunConfig.from_yaml(ROOT / CONFIGS["onpolicy"]).train.max_steps
        warm = runs_root / f"warm-s{seed}" / "final" / "model.safetensors"
        over += [f"train.max_steps={full - full // 2}", f"student.weights={warm}", "schedule.warmup_steps=0"]
        return RunConfig.from_yaml(ROOT / CONFIGS["onpolicy"], over)
    if method == "warm":
        full = RunConfig.from_yaml(ROOT / CONFIGS["student_alone"]).train.max_steps
        return RunConfig.from_yaml(ROOT / CONFIGS["student_alone"], over + [f"train.max_steps={full // 2}"])
    return RunConfig.from_yaml(ROOT / CONFIGS[method], over)


def train_one(method: str, seed: int, runs_root: Path) -> dict[str, Any]:
    """Train (or resume) one run, then evaluate its best student on the test split; returns its record."""
    from ktransfer.runner import evaluate_run, resume, run

    run_dir = runs_root / f"{method}-s{seed}"
    if not finished(run_dir):
        t0 = time.perf_counter()
        if (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file():
            resume(run_dir, progress=False)
        else:
            run(run_config(method, seed, runs_root), run_dir, progress=False)
        t_eval = time.perf_counter()
        evaluate_run(run_dir, "test", "best")
        timing = {"train_and_val_s": round(t_eval - t0, 1), "test_eval_s": round(time.perf_counter() - t_eval, 1),
                  "provenance": provenance.record()}  # the run's own record: which code and command trained it
        (run_dir / "bench-timing.json").write_text(json.dumps(timing))
    return record(method, seed, run_dir)


def record(method: str, seed: int, run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    test = json.loads((run_dir / "eval-test.json").read_text())
    timing_file = run_dir / "bench-timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    return {"method": method, "seed": seed, "run_dir": str(run_dir), "steps": summary["step"],
            "best_step": summary["best_step"], "wall_time_s": summary["wall_time_s"], **timing,
            "student_parameters": summary["student_parameters"], "teacher_parameters": summary["teacher_parameters"],
            "val": summary["best_val"], "test": {k: test[k] for k in ("perplexity", "loss", "teacher_kl", "accuracy")},
            "test_blocks": test["size"], "environment": summary["environment"]}


def aggregate(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: mean and 95% t-interval over seeds of test perplexity, loss and teacher_kl, and the
    paired differences against the student alone (the same seeds)."""
    from ktransfer.demo import mean_ci

    by: dict[str, dict[int, dict[str, Any]]] = {}
    for u in units:
        by.setdefault(u["method"], {})[u["seed"]] = u
    base = by.get(BASELINE, {})
    rows = []
    for method in [m for m in METHODS if m in by]:
        us = by[method]
        seeds = sorted(us)
        row: dict[str, Any] = {"method": method, "label": METHODS[method], "seeds": seeds,
                               "steps": us[seeds[0]]["steps"], "wall_time_s": mean_ci([us[s]["wall_time_s"] for s in seeds])}
        for key in ("perplexity", "loss", "teacher_kl", "accuracy"):
            row[key] = mean_ci([us[s]["test"][key] for s in seeds])
            paired = [s for s in seeds if s in base]
            row[f"diff_{key}"] = (mean_ci([us[s]["test"][key] - base[s]["test"][key] for s in paired])
                                  if paired and method != BASELINE else None)
        rows.append(row)
    return rows


def _fmt(ci: tuple[float, float | None] | None, digits: int, signed: bool = False) -> str:
    if ci is None:
        return "—"
    m, h = ci
    text = f"{m:+.{digits}f}" if signed else f"{m:.{digits}f}"
    if h is None or h != h:
        return text
    return f"{text} ± {h:.{digits}f}" + (" *" if signed and abs(m) > h else "")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | seeds | test perplexity | test loss (nats/token) | Δ loss vs alone | "
             "test KL(teacher ‖ student) / token | Δ KL vs alone | wall time / run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {_fmt(r['perplexity'], 0)} | {_fmt(r['loss'], 3)} | "
                     f"{_fmt(r['diff_loss'], 3, True)} | {_fmt(r['teacher_kl'], 3)} | {_fmt(r['diff_teacher_kl'], 3, True)} | "
                     f"{r['wall_time_s'][0] / 60:.1f} min |")
    return "\n".join(lines)


def write_readme(rows: list[dict[str, Any]], units: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    readme = HERE / "README.md"
    text = readme.read_text() if readme.is_file() else f"{TABLE_START}\n{TABLE_END}\n"
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    env = units[0]["environment"]
    body = (f"Command: `{meta['command']}`; {provenance.code_line(meta.get('provenance'))}; "
            f"{meta['wall_time_min']:.0f} min over {meta['sittings']} sitting(s) on "
            f"{env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']}, transformers {env['transformers']}, "
            f"{env['torch_threads']} thread(s) per run; student {units[0]['student_parameters']:,} parameters, teacher "
            f"{units[0]['teacher_parameters']:,}; test: {units[0]['test_blocks']} blocks of held-out articles. "
            "Mean ± 95% t-interval over seeds; Δ = paired difference against the student alone (* = interval excludes "
            "0; lower is better for both). The warm-started method's wall time is its on-policy half only.\n\n"
            f"{table(rows)}")
    readme.write_text(f"{head}{TABLE_START}\n{body}\n{TABLE_END}{tail}")


def work_units(methods: list[str], seeds: int, runs_root: Path) -> list[Any]:
    from ktransfer.workers import WorkUnit

    def unit(method: str, seed: int, needs: tuple[str, ...] = ()) -> WorkUnit:
        return WorkUnit(f"{method}-s{seed}", lambda: train_one(method, seed, runs_root),
                        lambda: finished(runs_root / f"{method}-s{seed}"), needs)

    units = []
    for s in range(seeds):  # the dearest (on-policy from scratch) first, so that the last runs are short
        if "onpolicy" in methods:
            units.append(unit("onpolicy", s))
        if "onpolicy_warm" in methods:
            units += [unit("warm", s), unit("onpolicy_warm", s, (f"warm-s{s}",))]
        if "student_alone" in methods:
            units.append(unit("student_alone", s))
    return units


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE / "runs"), help="where the run directories go")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes, one run each at a time")
    parser.add_argument("--worker", default="0/1", metavar="I/N", help="(set by --jobs) run as worker I of N")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process (default 1)")
    parser.add_argument("--table", action="store_true", help="do not train: rewrite the table from finished runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ktransfer.workers import read_sittings, record_sitting, run_workers, work_queue

    started = time.perf_counter()
    runs_root = Path(args.runs)
    runs_root.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/causal/run.py" + (f" --seeds {args.seeds}" if args.seeds != 3 else "") + \
        (f" --jobs {args.jobs}" if args.jobs > 1 else "")
    if not args.table:
        if args.jobs > 1 and args.worker == "0/1":
            for stale in (runs_root / "claims").glob("*.claim"):
                stale.unlink()
            if not run_workers(__file__, argv, args.jobs):
                return 1
        else:
            work_queue(work_units(args.methods, args.seeds, runs_root), runs_root / "claims")
            if args.worker != "0/1":
                return 0
        record_sitting(runs_root / "sittings.jsonl", (time.perf_counter() - started) / 60, command)
    units = [record(m, s, runs_root / f"{m}-s{s}") for m in args.methods for s in range(args.seeds)
             if finished(runs_root / f"{m}-s{s}")]
    if not units:
        print("no finished runs")
        return 1
    sittings = read_sittings(runs_root / "sittings.jsonl")
    meta = {"command": command, "seeds": args.seeds, "sittings": len(sittings),
            "wall_time_min": sum(float(s["wall_time_min"]) for s in sittings),
            "provenance": provenance.aggregate_record(units)}
    rows = aggregate(units)
    out = HERE / "results" / "causal.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from ktransfer.checkpoint import write_json_atomic

    write_json_atomic(out, {"meta": meta, "rows": rows, "runs": units})
    write_readme(rows, units, meta)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
