"""Seconds per prompt of the teacher's greedy continuations for sequence-level KD, by how many prompts one
`generate` call takes, and whether the continuations are the same.

The real-teacher benchmark's `generation` unit runs SmolLM2-135M-Instruct over every training prompt once (the
`seq_kd` targets stage, greedy, `new_tokens` tokens, cached on disk). Each decoding step reads every weight of
the teacher once for the whole batch, so on a CPU a larger batch spreads that cost over more prompts. This
times the stage itself on the first `--prompts` training prompts of the --full size, in batches of each
`--batches` size (each into a cache folder of its own, so nothing is reused), one thread, alternating the sizes
over `--repeats` rounds, and compares the continuations token by token with those of the first size.

    OMP_NUM_THREADS=1 python benchmarks/real_teacher/generation_batch.py      # about 10 minutes on 2 idle cores

Writes benchmarks/results/real_teacher_generation_batch.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import provenance  # noqa: E402
from harness.cli import apply_sets  # noqa: E402
from harness.reproduce import load_study  # noqa: E402

bench = load_study("real_teacher/bench.py")  # the real-teacher benchmark: its size, config, data and teacher

OUT = ROOT / "benchmarks" / "results" / "real_teacher_generation_batch.json"


def generate(prompts: list[dict[str, Any]], batch: int, size: dict[str, Any], teacher: str,
             cache_dir: Path) -> tuple[float, list[list[int]]]:
    """(seconds, continuations): the seq_kd targets stage over `prompts` in batches of `batch`, into `cache_dir`."""
    from ktransfer.sequence.stage import StageContext
    from ktransfer.sequence.targets import targets_stage_from_config
    from ktransfer.tasks import Task

    cfg = bench.method_config("seq_kd", size, cache_dir, 0, teacher, size.get("data"))
    data = bench.data_for(cfg)
    model = bench.teacher_model(teacher, data.info)
    stage = targets_stage_from_config(cfg.targets, "causal_lm")
    out: list[list[int]] = []
    started = time.perf_counter()
    for start in range(0, len(prompts), batch):
        rows = data.collate_fn(prompts[start:start + batch])
        made = stage(rows, StageContext(model, model, Task("causal_lm"), 0, torch.device("cpu")))
        out.extend(made["input_ids"][:, size["prompt_length"]:].tolist())
    return time.perf_counter() - started, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=128, help="training prompts timed (a multiple of every batch size)")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 64], help="prompts per generate call")
    p.add_argument("--repeats", type=int, default=2, help="rounds, each timing every batch size once")
    p.add_argument("--teacher", default=None, help="the teacher's model folder (default: the prepared SmolLM2)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=JSON",
                   help="change a setting of the --full size, e.g. --set new_tokens=4 (recorded)")
    p.add_argument("--out", default=str(OUT), help="the result JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    size = dict(bench.SIZES["full"])
    apply_sets(size, args.sets, also=("data",))  # data: another corpus, as the benchmark's --set data
    bad = [b for b in args.batches if b < 1 or args.prompts % b]
    if bad:
        raise SystemExit(f"--batches {bad}: each must divide --prompts {args.prompts}")
    from ktransfer.pretrained import smollm2_dir

    teacher = args.teacher or str(smollm2_dir())
    data = bench.data_for(bench.method_config("seq_kd", size, Path("."), 0, teacher, size.get("data")))
    if len(data.train) < args.prompts:
        raise SystemExit(f"--prompts {args.prompts}: the training split has {len(data.train)}")
    prompts = [data.train[i] for i in range(args.prompts)]
    seconds: dict[int, list[float]] = {b: [] for b in args.batches}
    made: dict[int, list[list[int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = args.batches if r % 2 == 0 else list(reversed(args.batches))
            for b in order:
                took, out = generate(prompts, b, size, teacher, Path(tmp) / f"r{r}-b{b}")
                seconds[b].append(took)
                made.setdefault(b, out)
    first = args.batches[0]
    result = {
        "provenance": provenance.record(argv),
        "teacher": args.teacher or "SmolLM2-135M-Instruct (float32)", "threads": torch.get_num_threads(),
        "prompts": args.prompts, "prompt_length": size["prompt_length"], "new_tokens": size["new_tokens"],
        "repeats": args.repeats,
        "seconds_per_prompt": {str(b): round(statistics.median(s) / args.prompts, 4) for b, s in seconds.items()},
        "speedup_over_first": {str(b): round(statistics.median(seconds[first]) / statistics.median(s), 3)
                               for b, s in seconds.items()},
        "same_continuations_as_first": {str(b): sum(x == y for x, y in zip(made[b], made[first], strict=True))
                                        for b in args.batches},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
