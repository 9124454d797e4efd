"""Learned knowledge selection on text: an actor-critic policy weights five kinds of knowledge.

A MiniLM teacher is fine-tuned on BBC News topics; a 2-layer MiniLM student (embeddings and two
teacher layers copied) then learns from the teacher's soft targets, hidden states, value
relations and attention maps, and the labels, while an actor-critic policy sets the five weights
once per phase of steps, rewarded by the fall of the task loss on training examples set aside.
Prints the student's test scores and the mean weight the policy gave each kind; the run folder
holds weights.png (the weights over training) and final/policy.pt (the policy, reusable).

Needs, once: `ktransfer data prepare minilm && ktransfer data prepare bbc-news`.

    python examples/select_knowledge_text.py                    # minutes on 2 CPU cores
    python examples/select_knowledge_text.py --teacher-steps 10 --steps 10 --train-size 200 --eval-size 64 --out runs/quick_select
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ktransfer import RunConfig, evaluate_run, run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=150, help="the student's steps")
    parser.add_argument("--train-size", type=int, default=None, help="training articles (default: all)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--eval-size", type=int, default=None,
                        help="validation and test articles (default: all of each split)")
    parser.add_argument("--out", default="runs/select_knowledge_text")
    args = parser.parse_args(argv)
    out = Path(args.out)

    data = {"name": "bbc_news", "max_length": args.max_length, "train_size": args.train_size,
            "val_size": args.eval_size, "test_size": args.eval_size, "split_seed": 0}
    common = {"task": "classification", "data": data, "optim": {"name": "adamw", "lr": 0.0001, "weight_decay": 0.01}}
    teacher = {**common, "student": {"builder": "minilm"}, "schedule": {"name": "linear", "warmup_steps": 0},
               "train": {"max_steps": args.teacher_steps, "batch_size": 16, "eval_batch_size": 64,
                         "eval_every": max(1, args.teacher_steps // 2)}}
    run(RunConfig.from_dict(teacher), out / "teacher", overwrite=True, progress=False)

    phase = max(1, args.steps // 15)
    student = {
        **common,
        "teacher": {"from_run": str(out / "teacher")},
        "student": {"builder": "minilm_student", "num_layers": 2, "init": "teacher_layers"},
        "knowledge": [
            {"type": "response", "name": "response", "divergence": "forward_kl", "temperature": 2.0},
            {"type": "feature", "name": "feature", "layer_map": "uniform", "loss": "mse"},
            {"type": "relation", "name": "relation", "variant": "token", "path": "attention.self.value",
             "relation_heads": 12, "layer_map": "last"},
            {"type": "attention", "name": "attention", "layer_map": "uniform", "path": "attention.self"},
            {"type": "labels", "name": "labels"},
        ],
        "selector": {"type": "actor_critic", "mode": "soft", "phase_steps": phase, "heldout_examples": 32,
                     "student_representation": "bert.pooler", "teacher_representation": "bert.pooler"},
        "train": {"max_steps": args.steps, "batch_size": 16, "eval_batch_size": 64,
                  "eval_every": max(1, args.steps // 2), "log_every": 1},
    }
    run(RunConfig.from_dict(student), out / "student", overwrite=True, progress=False)

    test = evaluate_run(out / "student", split="test")
    records = [json.loads(line) for line in (out / "student" / "metrics.jsonl").read_text().splitlines()]
    weights = [r["weights"] for r in records if r.get("weights")]
    mean = {name: sum(w[name] for w in weights) / len(weights) for name in weights[0]}
    print(f"student test accuracy {100 * test['accuracy']:.1f} %")
    print("mean weight per kind of knowledge: " + ", ".join(f"{k} {v:.2f}" for k, v in mean.items()))
    return {"test": test, "mean_weights": mean}


if __name__ == "__main__":
    main()
