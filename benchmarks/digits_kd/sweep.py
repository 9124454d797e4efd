"""Choose the demo's settings on the validation split of digits (the test split is never read).

Three stages, each choosing by mean validation accuracy over seeds 0, 1, 2 (accuracy of the best
checkpoint, as `ktransfer run` reports it):
  1. the teacher: a few architectures / learning rates / lengths;
  2. the student alone (the baseline): learning rate x number of steps, so the baseline is tuned
     as carefully as the distilled student;
  3. distillation, at the baseline's learning rate and length: temperature x weight of the
     soft-target term (the labels term gets 1 - weight).

    python benchmarks/digits_kd/sweep.py          # writes results/sweep.json and results/sweep.md

`ktransfer.demo` holds the chosen values; tests/test_demo.py checks they match results/sweep.json.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ktransfer.checkpoint import write_json_atomic, write_text_atomic
from ktransfer.config import RunConfig
from ktransfer.runner import environment, load_data, run

HERE = Path(__file__).parent
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness
from harness import provenance  # noqa: E402  (commit, command and machine of every result)
DATA = {"name": "digits"}
STUDENT = {"builder": "mlp", "hidden": [32]}
TEACHERS: dict[str, dict[str, Any]] = {
    "cnn[32,64] lr=1e-3 steps=600": {"student": {"builder": "cnn", "channels": [32, 64], "dropout": 0.2},
                                     "optim": {"lr": 1e-3}, "train": {"max_steps": 600}},
    "cnn[32,64] lr=3e-3 steps=1000": {"student": {"builder": "cnn", "channels": [32, 64], "dropout": 0.2},
                                      "optim": {"lr": 3e-3}, "train": {"max_steps": 1000}},
    "mlp[512,512] lr=1e-3 steps=1000": {"student": {"builder": "mlp", "hidden": [512, 512], "dropout": 0.3},
                                        "optim": {"lr": 1e-3}, "train": {"max_steps": 1000}},
}
STUDENT_LRS = [1e-3, 3e-3, 1e-2]
STUDENT_STEPS = [600, 1200]
TEMPERATURES = [1.0, 2.0, 4.0, 8.0]
WEIGHTS = [0.25, 0.5, 0.75, 0.9]


def config(model: dict[str, Any], lr: float, steps: int, seed: int, teacher_dir: Path | None = None,
           knowledge: list[dict[str, Any]] | None = None) -> RunConfig:
    return RunConfig.from_dict({
        "data": DATA, "student": model, "teacher": {"from_run": str(teacher_dir)} if teacher_dir else None,
        "knowledge": knowledge or [{"type": "labels"}], "optim": {"name": "adamw", "lr": lr},
        "schedule": {"name": "cosine"},
        "train": {"max_steps": steps, "batch_size": 64, "eval_every": 50, "log_every": 25, "seed": seed},
    })


def val_accuracy(cfg: RunConfig, run_dir: Path, data: Any) -> float:
    return run(cfg, run_dir, progress=False, data=data, overwrite=True).train.best_metrics["accuracy"]


def table(title: str, scores: dict[str, list[float]], chosen: str) -> list[str]:
    lines = [f"### {title}", "", "| setting | val accuracy (mean) | per seed |", "|---|---:|---|"]
    for k, v in sorted(scores.items(), key=lambda kv: -statistics.fmean(kv[1])):
        lines.append(f"| {k}{' **(chosen)**' if k == chosen else ''} | {100 * statistics.fmean(v):.2f} % | "
                     f"{', '.join(f'{100 * x:.2f}' for x in v)} |")
    return lines + [""]


def best(scores: dict[str, list[float]]) -> str:
    return max(scores, key=lambda k: statistics.fmean(scores[k]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    started = time.perf_counter()
    seeds = args.seeds
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = load_data(config(STUDENT, 1e-3, 1, 0))

        teacher_scores: dict[str, list[float]] = {}
        for name, spec in TEACHERS.items():
            for seed in seeds:
                cfg = config(spec["student"], spec["optim"]["lr"], spec["train"]["max_steps"], seed)
                teacher_scores.setdefault(name, []).append(val_accuracy(cfg, tmp / f"{name}-{seed}", data))
            print(f"teacher {name}: {teacher_scores[name]}", flush=True)
        teacher = best(teacher_scores)

        alone_scores: dict[str, list[float]] = {}
        for lr, steps in itertools.product(STUDENT_LRS, STUDENT_STEPS):
            key = f"lr={lr:g} steps={steps}"
            alone_scores[key] = [val_accuracy(config(STUDENT, lr, steps, s), tmp / "alone", data) for s in seeds]
            print(f"student alone {key}: {alone_scores[key]}", flush=True)
        alone = best(alone_scores)
        lr, steps = float(alone.split()[0][3:]), int(alone.split()[1][6:])

        kd_scores: dict[str, list[float]] = {}
        for t, w in itertools.product(TEMPERATURES, WEIGHTS):
            key = f"T={t:g} w={w:g}"
            terms = [{"type": "response", "divergence": "soft_target", "temperature": t, "weight": w},
                     {"type": "labels", "weight": round(1 - w, 6)}]
            kd_scores[key] = [
                val_accuracy(config(STUDENT, lr, steps, s, tmp / f"{teacher}-{s}", terms), tmp / "kd", data)
                for s in seeds
            ]
            print(f"distilled {key}: {kd_scores[key]}", flush=True)
        kd = best(kd_scores)

    chosen = {"teacher": teacher, "student": alone, "distillation": kd, "teacher_spec": TEACHERS[teacher],
              "student_lr": lr, "student_steps": steps,
              "temperature": float(kd.split()[0][2:]), "weight": float(kd.split()[1][2:])}
    made_by = provenance.record()
    results = {"command": made_by["command"], "seeds": seeds, "chosen": chosen, "provenance": made_by,
               "val_accuracy": {"teacher": teacher_scores, "student alone": alone_scores, "distilled": kd_scores},
               "wall_time_s": round(time.perf_counter() - started, 1), "environment": environment()}
    out = Path(args.out)
    write_json_atomic(out / "sweep.json", results)
    env = results["environment"]
    lines = [f"Validation accuracy, mean of seeds {seeds}. Command: `{results['command']}`; "
             f"{results['wall_time_s']} s on {env['machine']}, {env['cpu_count']} CPUs, torch {env['torch']}.", ""]
    lines += table("1. Teacher", teacher_scores, teacher)
    lines += table("2. Student alone (mlp [32])", alone_scores, alone)
    lines += table(f"3. Distilled student (mlp [32], {alone}, teacher {teacher})", kd_scores, kd)
    write_text_atomic(out / "sweep.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
