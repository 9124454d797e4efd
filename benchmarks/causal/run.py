"""Causal LM example: SmolLM2-135M distilled on-policy with backward KL, against the student on the text alone.

Runs configs/causal/smollm2_onpolicy.yaml and configs/causal/smollm2_student_alone.yaml (same
student, data, steps and seed), evaluates each run's best student (by validation perplexity) on
the held-out test articles (perplexity and teacher_kl = KL(teacher || student) per token), and
writes the table. A run whose directory holds a finished summary and a test evaluation is
skipped; a killed run is resumed from its newest checkpoint. One intra-op thread by default:
on the shared 2-core machine two threads were about 9x slower than one (contention).

    ktransfer data prepare bbc-news && ktransfer data prepare smollm2
    python benchmarks/causal/run.py            # both runs (about 10 min each here), then the table
    python benchmarks/causal/run.py --table    # only rewrite the table from finished runs

Writes benchmarks/causal/results/causal.json and the table into benchmarks/causal/README.md.
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
RUNS = {"onpolicy": ("configs/causal/smollm2_onpolicy.yaml", "on-policy, backward KL (student samples + text, lambda 0.5)"),
        "student_alone": ("configs/causal/smollm2_student_alone.yaml", "student on the text alone (cross-entropy)")}
TABLE_START, TABLE_END = "<!-- table:start -->", "<!-- table:end -->"


def finished(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("finished", False) \
        and (run_dir / "eval-test.json").is_file()


def run_one(name: str, runs_root: Path) -> dict[str, Any]:
    """Train (or resume) one config, then evaluate its best student on the test split."""
    from ktransfer.config import RunConfig
    from ktransfer.runner import evaluate_run, resume, run

    config, _ = RUNS[name]
    run_dir = runs_root / name
    if not finished(run_dir):
        t0 = time.perf_counter()
        if (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file():
            resume(run_dir, progress=False)
        else:
            run(RunConfig.from_yaml(ROOT / config), run_dir, progress=False)
        t_eval = time.perf_counter()
        evaluate_run(run_dir, "test", "best")
        timing = {"train_and_val_s": round(t_eval - t0, 1), "test_eval_s": round(time.perf_counter() - t_eval, 1)}
        (run_dir / "bench-timing.json").write_text(json.dumps(timing))
    summary = json.loads((run_dir / "summary.json").read_text())
    test = json.loads((run_dir / "eval-test.json").read_text())
    timing_file = run_dir / "bench-timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    return {"name": name, "config": config, "run_dir": str(run_dir), "steps": summary["step"],
            "best_step": summary["best_step"], "wall_time_s": summary["wall_time_s"], **timing,
            "student_parameters": summary["student_parameters"], "teacher_parameters": summary["teacher_parameters"],
            "val": summary["best_val"], "test": {k: test[k] for k in ("perplexity", "loss", "teacher_kl", "accuracy")},
            "test_blocks": test["size"], "environment": summary["environment"]}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| run | test perplexity | test KL(teacher ‖ student) / token | val perplexity | steps | "
             "train + val wall time |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {RUNS[r['name']][1]} | {r['test']['perplexity']:.1f} | {r['test']['teacher_kl']:.3f} | "
                     f"{r['val']['perplexity']:.1f} | {r['steps']} | {r['wall_time_s'] / 60:.1f} min |")
    return "\n".join(lines)


def write_readme(results: list[dict[str, Any]]) -> None:
    readme = HERE / "README.md"
    text = readme.read_text() if readme.is_file() else f"{TABLE_START}\n{TABLE_END}\n"
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    env = results[0]["environment"]
    body = (f"{table(results)}\n\nMachine: {env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']}, "
            f"transformers {env['transformers']}, {env['torch_threads']} thread(s); student "
            f"{results[0]['student_parameters']:,} parameters, teacher {results[0]['teacher_parameters']:,}; test: "
            f"{results[0]['test_blocks']} blocks of held-out articles.")
    readme.write_text(f"{head}{TABLE_START}\n{body}\n{TABLE_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE / "runs"), help="where the run directories go")
    parser.add_argument("--only", choices=sorted(RUNS), action="append", help="run only these (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--table", action="store_true", help="do not train: rewrite the table from finished runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))
    runs_root = Path(args.runs)
    names = args.only or list(RUNS)
    if args.table:
        names = [n for n in names if finished(runs_root / n)]
    results = [run_one(name, runs_root) for name in names]
    out = HERE / "results" / "causal.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    if results:
        write_readme(results)
    print(table(results))


if __name__ == "__main__":
    main()
