"""Build cost of a k = 64 teacher output store beyond the teacher's forward pass, SmolLM2-135M over BBC News.

Per batch (8 blocks of 32 tokens of configs/causal/smollm2_student_alone.yaml's data), interleaved so
that a busy machine slows every part alike: the teacher's forward pass; then, on the same logits,
the top-k and tail of the target positions and the store writer's adding of the examples, once as
the build does it (`topk_log_probs` over the target positions, a chunk at a time, and the writer's
`add_rows`, one check for the batch) and once as written here with plain operations (log_softmax of
the selected positions, top-k, a copy with the kept ids masked and a log-sum-exp over it,
`SparseTeacher` checks of the batch, then the writer's `add` and its checks example by example).
Median seconds per batch over `--batches` batches after one warm-up; the build's time relative to the
plain forward pass is (forward + top-k + add) / forward. One thread. Writes
benchmarks/results/teacher_store_build.json.

    ktransfer data prepare bbc-news && ktransfer data prepare smollm2
    OMP_NUM_THREADS=1 python benchmarks/teacher_store/build_speed.py
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "teacher_store"))
from harness import provenance  # noqa: E402  (commit, command and machine of every result)
from measure import BATCH, config  # noqa: E402  (the data of the store benchmark)

K = 64


def plain_topk(logits: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k and tail with plain operations over the selected positions (what `topk_log_probs` replaces)."""
    from ktransfer.sparse_divergences import SparseTeacher

    logp = torch.log_softmax(logits[mask].float(), dim=-1)
    top, ids = logp.topk(k, dim=-1)
    rest = logp.scatter(-1, ids, -math.inf)
    empty = torch.isneginf(rest).all(dim=-1, keepdim=True)
    tail = torch.logsumexp(rest.masked_fill(empty, 0.0), dim=-1).masked_fill(empty.squeeze(-1), -math.inf)
    checked = SparseTeacher(ids, top, tail)
    return checked.ids, checked.logprobs, checked.tail_logprob


def main() -> int:
    from ktransfer.building import build_model, load_data
    from ktransfer.config import RunConfig
    from ktransfer.sparse_divergences import topk_log_probs
    from ktransfer.store import StoreWriter
    from ktransfer.tasks import Task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="batches of 8 blocks of 32 tokens (default: 8)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_store_build.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    examples = (args.batches + 1) * BATCH
    cfg = RunConfig.from_dict(config(examples, {"builder": "smollm2"}, [{"type": "labels"}]))
    data = load_data(cfg)
    teacher = build_model(cfg.teacher, data.info, "teacher").eval().requires_grad_(False)
    task = Task("causal_lm")
    seconds: dict[str, list[float]] = {"forward": [], "topk_and_add": [], "plain_topk_and_add": []}
    positions = 0
    with tempfile.TemporaryDirectory(prefix="teacher_store_build_") as tmp:
        writers = {name: StoreWriter(Path(tmp) / name, kind="topk", task="causal_lm", examples=examples, teacher="t",
                                     data="d", k=K, vocab_size=49152, shard_size=examples)
                   for name in ("topk_and_add", "plain_topk_and_add")}
        for number in range(args.batches + 1):
            indices = list(range(number * BATCH, (number + 1) * BATCH))
            batch = data.collate_fn([data.train[i] for i in indices])
            t0 = time.perf_counter()
            with torch.no_grad():
                out = task.forward(teacher, batch)
            times = {"forward": time.perf_counter() - t0}
            counts = out.mask.sum(-1).tolist()
            for name, writer in writers.items():
                t0 = time.perf_counter()
                if name == "topk_and_add":
                    ids, logprobs, tail = topk_log_probs(out.logits, K, mask=out.mask)
                    writer.add_rows(indices, counts, ids=ids, logprobs=logprobs, tail=tail)
                else:
                    ids, logprobs, tail = plain_topk(out.logits, out.mask, K)
                    start = 0
                    for index, count in zip(indices, counts, strict=True):
                        writer.add(index, ids=ids[start:start + count], logprobs=logprobs[start:start + count],
                                   tail=tail[start:start + count])
                        start += count
                times[name] = time.perf_counter() - t0
            if number:  # the first batch warms up
                positions += sum(counts)
                for name, value in times.items():
                    seconds[name].append(value)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result: dict[str, Any] = {
        "provenance": provenance.record(), "threads": 1, "teacher": "SmolLM2-135M-Instruct (float32)", "k": K,
        "batches": args.batches, "batch_size": BATCH, "target_positions": positions,
        "median_seconds_per_batch": {name: round(value, 4) for name, value in median.items()},
        "build_vs_forward": round((median["forward"] + median["topk_and_add"]) / median["forward"], 3),
        "plain_build_vs_forward": round((median["forward"] + median["plain_topk_and_add"]) / median["forward"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"per batch: forward {median['forward']:.3f} s, top-k + add {median['topk_and_add']:.3f} s "
          f"(plain operations {median['plain_topk_and_add']:.3f} s)")
    print(f"build {result['build_vs_forward']:.3f}x the plain forward pass (plain operations "
          f"{result['plain_build_vs_forward']:.3f}x)")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
