"""Causal LM example: SmolLM2-135M distilled on-policy with backward KL, against the student on the text alone.

Three ways to train the same 4-layer Llama student (same data, steps and seed), per seed:

  student_alone   configs/causal/smollm2_student_alone.yaml: next-token cross-entropy on the text
  onpolicy        configs/causal/smollm2_onpolicy.yaml: on-policy backward KL from the random student
  onpolicy_warm   the student on the text alone for half the steps (its own run, `warm-s<seed>`), then
                  the on-policy config for the other half: the warm start practitioners use

Each run's best student (by validation perplexity) is evaluated on the held-out test articles
(perplexity, and teacher_kl = KL(teacher || student) per token). Table: mean and 95% t-interval over
seeds, and the paired difference of each method against the student alone. Each run's record is
written at once to RUNS/units/<method>-s<seed>.json and the run is then skipped; a run whose directory
holds a finished summary and a test evaluation is not trained again; a killed run resumes from its
newest checkpoint. One intra-op thread per process: on the 2-core machine two threads were about 9x
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
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the harness
from harness import grid, provenance  # noqa: E402
from harness.aggregate import aggregate_provenance, ci, paired  # noqa: E402
from harness.cli import Benchmark  # noqa: E402
from harness.cli import main as harness_main  # noqa: E402
from harness.grid import Unit  # noqa: E402
from harness.sittings import read_sittings  # noqa: E402
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
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for u in units:
        by.setdefault(u["method"], {})[u["seed"]] = u
    base = by.get(BASELINE, {})
    rows = []
    for method in [m for m in METHODS if m in by]:
        us = by[method]
        seeds = sorted(us)
        row: dict[str, Any] = {"method": method, "label": METHODS[method], "seeds": seeds,
                               "steps": us[seeds[0]]["steps"], "wall_time_s": ci([us[s]["wall_time_s"] for s in seeds])}
        for key in ("perplexity", "loss", "teacher_kl", "accuracy"):
            row[key] = ci([us[s]["test"][key] for s in seeds])
            row[f"diff_{key}"] = (paired({s: us[s]["test"][key] for s in seeds}, {s: b["test"][key] for s, b in base.items()})
                                  if method != BASELINE else None)
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
    """Put the table into benchmarks/causal/README.md, between its table markers."""
    (HERE / "README.md").write_text(readme_text(rows, units, meta))


def readme_text(rows: list[dict[str, Any]], units: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """benchmarks/causal/README.md with the table (and its header line) between the table markers."""
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
    return f"{head}{TABLE_START}\n{body}\n{TABLE_END}{tail}"


def grid_units(methods: list[str], seeds: int) -> list[Unit]:
    """The runs, the dearest (on-policy from scratch) first in each seed, so that the last runs are short; the
    warm-started run waits for its warm start."""
    units = []
    for s in range(seeds):
        if "onpolicy" in methods:
            units.append(Unit(f"onpolicy-s{s}", {"method": "onpolicy", "seed": s}))
        if "onpolicy_warm" in methods:
            units += [Unit(f"warm-s{s}", {"method": "warm", "seed": s}),
                      Unit(f"onpolicy_warm-s{s}", {"method": "onpolicy_warm", "seed": s}, (f"warm-s{s}",))]
        if "student_alone" in methods:
            units.append(Unit(f"student_alone-s{s}", {"method": "student_alone", "seed": s}))
    return units


def invocation(args: argparse.Namespace) -> str:
    """The benchmark's command as recorded with its results."""
    return "python benchmarks/causal/run.py" + (f" --seeds {args.seeds}" if args.seeds != 3 else "") + \
        (f" --jobs {args.jobs}" if args.jobs > 1 else "")


class Causal(Benchmark):
    """The causal LM example on the harness: one unit per run (the warm starts included), each
    `<method>-s<seed>.json` under RUNS/units/, beside the run directories."""

    script = Path(__file__)
    description = globals()["__doc__"].splitlines()[0]
    context_keys = ("command", "provenance", "sittings", "wall_time_min")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--runs", default=str(HERE / "runs"), help="where the run directories go")
        p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
        p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process (default 1)")
        p.add_argument("--table", dest="aggregate_only", action="store_true",
                       help="do not train: rewrite the table from finished runs (as --aggregate-only)")
        p.add_argument("--report-dir", default=None,
                       help="write causal.json and README.md (with the table) here instead of benchmarks/causal")

    def setup(self, args: argparse.Namespace) -> None:
        torch.set_num_threads(args.threads)
        Path(args.runs).mkdir(parents=True, exist_ok=True)

    def results(self, args: argparse.Namespace) -> Path:
        return Path(args.runs) / "units"

    def state(self, args: argparse.Namespace) -> Path:
        return Path(args.runs)

    def units(self, args: argparse.Namespace) -> list[Unit]:
        return grid_units(args.methods, args.seeds)

    def run_unit(self, unit: Unit, args: argparse.Namespace) -> dict[str, Any]:
        return train_one(unit.key["method"], unit.key["seed"], Path(args.runs))

    def sitting_command(self, args: argparse.Namespace) -> str:
        return invocation(args)

    def context(self, args: argparse.Namespace) -> dict[str, Any]:
        sittings = read_sittings(Path(args.runs) / "sittings.jsonl")
        return {"command": invocation(args), "provenance": provenance.record(), "sittings": len(sittings),
                "wall_time_min": sum(float(s["wall_time_min"]) for s in sittings)}

    def aggregate(self, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any] | None:
        names = [f"{m}-s{s}" for m in args.methods for s in range(args.seeds)]
        units = grid.read_units(self.results(args), names)
        if not units:
            return None
        meta = {**context, "seeds": args.seeds, "provenance": aggregate_provenance(units, context)}
        return {"meta": meta, "rows": aggregate(units), "runs": units}

    def outputs(self, result: dict[str, Any], args: argparse.Namespace) -> dict[Path, Any]:
        folder = Path(args.report_dir) if args.report_dir else HERE
        json_dir = folder if args.report_dir else HERE / "results"
        return {json_dir / "causal.json": result,
                folder / "README.md": readme_text(result["rows"], result["runs"], result["meta"])}

    def summary(self, result: dict[str, Any]) -> str:
        return table(result["rows"])


def main(argv: list[str] | None = None) -> int:
    return harness_main(Causal(), argv)


if __name__ == "__main__":
    sys.exit(main())
