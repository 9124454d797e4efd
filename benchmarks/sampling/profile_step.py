"""Where a cached sampling step's time goes: the costs the KV cache cannot remove.

Profiles (cProfile, one thread) the cached on-policy sampling of `bench.py`'s causal case (Llama,
hidden 256, 4 layers, vocabulary 8,000) at `--rows` rows and a 32-token prompt, and reports the
share of its time spent in `torch.multinomial` (the sampling draw) and in the linear layers; then
times, alone, `torch.multinomial` on rows x 8,000 probabilities and the output layer's matrix
product (rows x 256 by 256 x 8,000). Writes benchmarks/results/sampling_step_profile.json.

    python benchmarks/sampling/profile_step.py
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (the KV-cache benchmark beside this file; it puts benchmarks/ on sys.path)
from harness import report  # noqa: E402


def timed_ms(fn: object, repeats: int = 200) -> float:
    """Mean milliseconds per call of `fn` after 5 warm-up calls."""
    for _ in range(5):
        fn()  # type: ignore[operator]
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - t0) / repeats * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--calls", type=int, default=3, help="profiled sampling calls")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from ktransfer.runner import environment

    model = bench.build("causal")
    bench.sample("causal", model, True, 32, args.rows)  # warm-up
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.calls):
        bench.sample("causal", model, True, 32, args.rows)
    profile.disable()
    stats = pstats.Stats(profile)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]  (internal times)

    def share(name: str) -> float:
        """Share of the profiled time inside built-ins whose name contains `name`."""
        return sum(row[2] for (_, _, func), row in stats.stats.items()  # type: ignore[attr-defined]
                   if func.startswith("<built-in") and name in func) / total

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(args.rows, bench.VOCAB, generator=g), -1)
    hidden, head = torch.randn(args.rows, 256, generator=g), torch.randn(bench.VOCAB, 256, generator=g)
    made_by = bench.provenance.record()
    result = {
        "command": made_by["command"], "provenance": made_by,
        "environment": environment(), "threads": 1, "rows": args.rows, "prompt": 32, "new_tokens": bench.NEW_TOKENS,
        "profiled_calls": args.calls,
        "share_multinomial": share("multinomial"),
        "share_linear": share("_nn.linear"),
        "multinomial_ms": timed_ms(lambda: torch.multinomial(probs, 1)),
        "output_layer_ms": timed_ms(lambda: torch.nn.functional.linear(hidden, head)),
    }
    out = bench.ROOT / "benchmarks" / "results" / "sampling_step_profile.json"
    report.write_json(out, result)
    print(f"cached sampling, {args.rows} rows: torch.multinomial {100 * result['share_multinomial']:.0f}% of the time, "
          f"linear layers {100 * result['share_linear']:.0f}%; alone: multinomial on {args.rows} x {bench.VOCAB} "
          f"{result['multinomial_ms']:.2f} ms, output layer {result['output_layer_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
