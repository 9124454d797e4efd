"""Dev-only tuning probe: one on-policy method of the translation benchmark at another learning rate
(and, with --set, other settings of its config).

Reuses the benchmark's teacher and warm starts (run `bench.py --quick` first, and its `*_from_kd`
methods for a from-KD probe) and trains into its own folder, so the benchmark's results are
untouched; prints the best dev metrics (the checkpoint is chosen on dev BLEU; test is not looked at).

    python benchmarks/translation/probe_lr.py reinforce 0.0001 --seed 0
    python benchmarks/translation/probe_lr.py reinforce_from_kd 0.0005 --seed 0 \
        --set knowledge.0.baseline=self_critic --set targets.greedy_baseline=true
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (the benchmark module beside this file)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("method", choices=bench.ON_POLICY + bench.FROM_KD)
    p.add_argument("lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=str(HERE / "runs" / "quick"), help="the benchmark's run directories")
    p.add_argument("--out", default="/tmp/ktransfer-probe")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override, as `ktransfer run --set` takes it (e.g. knowledge.0.baseline=self_critic)")
    args = p.parse_args(argv)
    from ktransfer.config import RunConfig

    torch.set_num_threads(1)
    size = copy.deepcopy(bench.SIZES["quick"])
    cfg = bench.method_config(args.method, size, Path(args.runs), args.seed).to_dict()
    cfg["optim"]["lr"] = args.lr
    config = RunConfig.from_dict(cfg, args.sets)
    name = f"{args.method}-lr{args.lr}-s{args.seed}" + "".join(f"-{item.replace('=', '_')}" for item in args.sets)
    result = bench.train(config, Path(args.out) / name)
    print(json.dumps({"method": args.method, "lr": args.lr, "seed": args.seed, "sets": args.sets,
                      "best_step": result.train.best_step, "best_dev": result.train.best_metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
