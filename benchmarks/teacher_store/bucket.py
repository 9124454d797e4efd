"""Forward + backward time of the sparse forward KL (tail bucket) against a top-k teacher: fused collapse vs unfused.

The student's logits (rows x V) are collapsed onto the teacher's k ids and one rest outcome. The
unfused collapse is written here with plain autograd operations (log-sum-exp over the vocabulary,
a copy with the ids masked, a second log-sum-exp over the complement); the fused one is
`ktransfer.bucket_student.bucket_log_probs` as `sparse_forward_kl` uses it. Cross-entropy on the
same logits (the labels-alone loss) is timed for scale. Median of `--repeats` runs after one
warm-up, one thread. Writes benchmarks/results/teacher_store_bucket.json.

    OMP_NUM_THREADS=1 python benchmarks/teacher_store/bucket.py
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import provenance  # noqa: E402  (commit, command and machine of every result)


def unfused_log_q(z: Tensor, ids: Tensor) -> Tensor:
    """The collapse with plain autograd operations (what the fused function replaces)."""
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    rest = z.scatter(-1, ids, -math.inf)
    empty = torch.isneginf(rest).all(dim=-1, keepdim=True)
    rest_lse = torch.logsumexp(rest.masked_fill(empty, 0.0), dim=-1).masked_fill(empty.squeeze(-1), -math.inf)
    return torch.cat([z.gather(-1, ids) - lse, rest_lse.unsqueeze(-1) - lse], dim=-1)


def timed(fn: Callable[[], Tensor], z: Tensor, repeats: int) -> float:
    """Median milliseconds of fn() and its backward."""
    times = []
    for i in range(repeats + 1):
        z.grad = None
        t0 = time.perf_counter()
        fn().backward()
        if i:
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> int:
    from ktransfer.sparse_divergences import SparseTeacher, _bucket_teacher, sparse_forward_kl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="target positions (default: 256, batch 8 x 32)")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary (default: 49,152, SmolLM2's)")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_store_bucket.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    z = (torch.randn(args.rows, args.vocab, generator=gen) * 3).requires_grad_(True)
    teacher = SparseTeacher.from_logits(torch.randn(args.rows, args.vocab, generator=gen) * 3, args.k)
    labels = torch.randint(args.vocab, (args.rows,), generator=gen)
    log_p = _bucket_teacher(teacher.logprobs, teacher.tail_logprob, args.vocab, 1.0)

    def unfused() -> Tensor:
        log_q = unfused_log_q(z, teacher.ids)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()

    cases = {
        "unfused": unfused,
        "fused": lambda: sparse_forward_kl(z, teacher),
        "fused_chunk_size_64": lambda: sparse_forward_kl(z, teacher, chunk_size=64),
        "cross_entropy": lambda: torch.nn.functional.cross_entropy(z, labels),
    }
    torch.testing.assert_close(cases["unfused"](), cases["fused"](), rtol=1e-5, atol=1e-6)
    ms = {name: round(timed(fn, z, args.repeats), 1) for name, fn in cases.items()}
    result = {"provenance": provenance.record(), "threads": 1, "rows": args.rows, "vocab": args.vocab, "k": args.k,
              "loss": "sparse forward KL, tail bucket, mean", "milliseconds_forward_backward": ms,
              "fused_speedup": round(ms["unfused"] / ms["fused"], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, value in ms.items():
        print(f"{name:>22}: {value:8.1f} ms")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
