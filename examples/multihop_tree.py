"""A multi-hop chain to a decision tree: an MLP teacher, a depth-3 tree student, on digits.

A greedy planner picks, on validation, whether an intermediate model (a small MLP or a deeper
tree) between teacher and tree helps; every hop is distillation (`kd`: the tree is fitted on
the teacher's tempered soft labels). Prints the chain's report: each hop's validation and test
accuracy, the tree alone and the 1-hop transfer.

    python examples/multihop_tree.py                 # about 10 s on 2 CPU cores
    python examples/multihop_tree.py --steps 100 --out runs/quick_chain
"""

from __future__ import annotations

import argparse

from ktransfer.hops.chain import run_chain_config
from ktransfer.hops.config import ChainConfig


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of every torch model in the chain")
    parser.add_argument("--depth", type=int, default=3, help="the student tree's depth")
    parser.add_argument("--out", default="runs/multihop_tree")
    args = parser.parse_args(argv)

    config = ChainConfig.from_dict({
        "data": {"name": "digits", "split_seed": 0},
        "teacher": {"kind": "mlp", "hidden": [128, 128]},
        "student": {"kind": "tree", "max_depth": args.depth},
        "method": {"name": "kd", "temperature": 4.0},
        "plan": {"strategy": "greedy", "ladder": [{"kind": "mlp", "hidden": [8]}, {"kind": "tree", "max_depth": 8}],
                 "epsilon": 0.0, "max_hops": 2},
        "confidence_split": "holdout",
        "teacher_fraction": 0.5,
        "train": {"max_steps": args.steps, "batch_size": 64, "lr": 0.003},
    })
    report = run_chain_config(config, args.out)  # rerun to resume: finished hops are reused
    table = report.table()
    print(table)
    return table


if __name__ == "__main__":
    main()
