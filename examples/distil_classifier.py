"""Distil a classifier with soft targets: a CNN teacher, an MLP student, on scikit-learn's digits.

Trains the teacher, the student alone on the labels, and the same student on the teacher's
softened outputs (Hinton's soft-target loss at temperature T) plus the labels; prints the test
accuracy of each. No download: the digits ship with scikit-learn.

    python examples/distil_classifier.py                     # the demo's settings, about 25 s on 2 CPU cores
    python examples/distil_classifier.py --teacher-steps 100 --student-steps 100 --out runs/quick
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ktransfer import RunConfig, evaluate_run, run


def train(config: dict[str, Any], run_dir: Path) -> float:
    """Train one run (replacing an earlier one in `run_dir`); its test accuracy at the best validation step."""
    run(RunConfig.from_dict(config), run_dir, overwrite=True, progress=False)
    return evaluate_run(run_dir, split="test")["accuracy"]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=1000)
    parser.add_argument("--student-steps", type=int, default=600)
    parser.add_argument("--temperature", type=float, default=8.0)
    parser.add_argument("--weight", type=float, default=0.75, help="the soft targets' weight; the labels get the rest")
    parser.add_argument("--out", default="runs/distil_classifier")
    args = parser.parse_args(argv)
    out = Path(args.out)

    data = {"name": "digits", "val_fraction": 0.15, "test_fraction": 0.2, "split_seed": 0}
    common = {"task": "classification", "data": data, "schedule": {"name": "cosine"}}
    teacher = {**common, "student": {"builder": "cnn", "channels": [32, 64]}, "optim": {"lr": 0.003},
               "train": {"max_steps": args.teacher_steps, "batch_size": 64, "eval_every": 50}}
    student = {"builder": "mlp", "hidden": [32]}
    student_train = {"max_steps": args.student_steps, "batch_size": 64, "eval_every": 50}
    alone = {**common, "student": student, "optim": {"lr": 0.01}, "train": student_train}
    distilled = {**alone, "teacher": {"from_run": str(out / "teacher"), "which": "best"},
                 "knowledge": [{"type": "response", "divergence": "soft_target", "temperature": args.temperature,
                                "weight": args.weight},
                               {"type": "labels", "weight": 1.0 - args.weight}]}

    scores = {"teacher": train(teacher, out / "teacher"),
              "student alone": train(alone, out / "alone"),
              "distilled student": train(distilled, out / "distilled")}
    for name, accuracy in scores.items():
        print(f"{name:>17}: test accuracy {100 * accuracy:.2f} %")
    return scores


if __name__ == "__main__":
    main()
