"""Train from a teacher that ktransfer never runs: a scikit-learn model's outputs written into a teacher output store.

Any teacher served elsewhere (a vLLM server or an API returning top-k log-probabilities, a
scikit-learn model) reaches a run the same way: a script writes its outputs for every training
example with `ktransfer.store.StoreWriter`, and the run config names the folder as its teacher
(`teacher: {store: DIR}`). Here the teacher is a logistic regression on scikit-learn's digits; its
log-probabilities are the stored class logits (a softmax of log-probabilities gives them back).

    python examples/store_from_topk_api.py                   # about 15 s on 2 CPU cores
    python examples/store_from_topk_api.py --steps 100 --out runs/quick_store
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from ktransfer import RunConfig, evaluate_run, run
from ktransfer.building import load_data
from ktransfer.store import StoreWriter, examples_digest


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--out", default="runs/store_from_topk_api")
    args = parser.parse_args(argv)
    out = Path(args.out)
    store = out / "store"
    config = {
        "task": "classification",
        "data": {"name": "digits", "val_fraction": 0.15, "test_fraction": 0.2, "split_seed": 0},
        "teacher": {"store": str(store)},
        "student": {"builder": "mlp", "hidden": [32]},
        "knowledge": [{"type": "response", "divergence": "soft_target", "temperature": args.temperature, "weight": 0.75},
                      {"type": "labels", "weight": 0.25}],
        "optim": {"lr": 0.01}, "schedule": {"name": "cosine"},
        "train": {"max_steps": args.steps, "batch_size": 64, "eval_every": 50},
    }
    cfg = RunConfig.from_dict(config)

    # 1. the teacher, outside ktransfer: fitted on the run's own training split (example i = row i)
    data = load_data(cfg)
    train = data.train
    x = np.stack([train[i]["inputs"].numpy() for i in range(len(train))])
    y = np.array([int(train[i]["labels"]) for i in range(len(train))])
    teacher = LogisticRegression(max_iter=2000).fit(x, y)
    x_test = np.stack([data.test[i]["inputs"].numpy() for i in range(len(data.test))])
    y_test = np.array([int(data.test[i]["labels"]) for i in range(len(data.test))])
    teacher_accuracy = float((teacher.predict(x_test) == y_test).mean())

    # 2. its outputs for every training example, written into a store
    log_probs = np.clip(teacher.predict_log_proba(x), -50.0, 0.0)  # finite logits; softmax gives the probabilities back
    writer = StoreWriter(store, kind="logits", task="classification", examples=len(train),
                         teacher=f"sklearn LogisticRegression {teacher.get_params()}", data=examples_digest(train),
                         tokenizer=data.info.get("tokenizer_sha256"), num_classes=log_probs.shape[1],
                         settings={"written_by": "examples/store_from_topk_api.py"})
    for i, row in enumerate(log_probs):
        writer.add(i, logits=torch.from_numpy(row).float())
    writer.close()

    # 3. a student trained from the store: no teacher model is built
    run(cfg, out / "run", overwrite=True, progress=False)
    student_accuracy = float(evaluate_run(out / "run", split="test")["accuracy"])
    print(f"teacher (scikit-learn, outside ktransfer): test accuracy {100 * teacher_accuracy:.2f} %")
    print(f"student trained from the store at {store}: test accuracy {100 * student_accuracy:.2f} %")
    return {"teacher": teacher_accuracy, "student": student_accuracy}


if __name__ == "__main__":
    main()
