"""Time and memory of the divergences, plain versus chunked, forward + backward.

For each case a fresh subprocess builds student/teacher logits of shape (tokens, V), then runs
loss + backward; we record the median wall time of `--repeats` runs, the bytes autograd keeps
for the backward pass (saved tensors, measured with saved_tensors_hooks) and, on Linux, the
peak resident memory above the inputs (VmHWM after resetting it through /proc/self/clear_refs).
On a GPU it also records torch.cuda.max_memory_allocated above the inputs.

    python benchmarks/divergences/bench.py                  # CPU defaults: 2048 tokens x 32000
    python benchmarks/divergences/bench.py --tokens 8192 --vocab 128256 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def measure(divergence: str, tokens: int, vocab: int, chunk: int | None, device: str, dtype: str,
            repeats: int) -> dict[str, Any]:
    """One case, in this process (called in a fresh subprocess by `main`)."""
    import torch

    from ktransfer.divergences import get_divergence

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    student = torch.randn(tokens, vocab, device=device, dtype=dt, requires_grad=True)
    teacher = torch.randn(tokens, vocab, device=device, dtype=dt)
    fn = get_divergence(divergence)
    kwargs: dict[str, Any] = {"chunk_size": chunk}

    # Bytes of distinct storages autograd keeps for backward, not counting the inputs' own
    # storage (chunks saved by checkpointing are views of the inputs and cost nothing).
    seen = {student.untyped_storage().data_ptr(), teacher.untyped_storage().data_ptr()}
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(student, teacher, **kwargs)
    loss.backward()
    student.grad = None

    times = []
    peak_kib = -1
    cuda_peak = None
    for i in range(repeats):
        if i == repeats - 1:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                base_kib = _status_kib("VmRSS")
            except OSError:
                base_kib = -1
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                cuda_base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        loss = fn(student, teacher, **kwargs)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if i == repeats - 1:
            if base_kib >= 0:
                peak_kib = _status_kib("VmHWM") - base_kib
            if device == "cuda":
                cuda_peak = torch.cuda.max_memory_allocated() - cuda_base
        student.grad = None
    return {
        "divergence": divergence, "tokens": tokens, "vocab": vocab, "chunk_size": chunk, "device": device,
        "dtype": dtype, "median_s": statistics.median(times), "times_s": times,
        "saved_for_backward_mb": saved / 2**20, "peak_rss_above_inputs_mb": peak_kib / 1024 if peak_kib >= 0 else None,
        "cuda_peak_above_inputs_mb": cuda_peak / 2**20 if cuda_peak is not None else None,
        "input_mb": 2 * tokens * vocab * student.element_size() / 2**20, "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--divergences", nargs="+", default=["forward_kl", "backward_kl", "jsd"])
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 512, 128], help="0 = not chunked")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.one:
        case = json.loads(args.one)
        print(json.dumps(measure(**case)))
        return

    from ktransfer.runner import environment

    started = time.perf_counter()
    rows = []
    for div in args.divergences:
        for chunk in args.chunks:
            case = {"divergence": div, "tokens": args.tokens, "vocab": args.vocab, "chunk": chunk or None,
                    "device": args.device, "dtype": args.dtype, "repeats": args.repeats}
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(case)], capture_output=True,
                                  text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{div:12s} chunk={str(chunk or 'none'):>5s} {r['median_s']:.3f} s  saved {r['saved_for_backward_mb']:.0f} MB"
                  f"  peak {r['peak_rss_above_inputs_mb']} MB", flush=True)
    env = environment()
    command = "python benchmarks/divergences/bench.py " + " ".join(sys.argv[1:])
    results = {"command": command.strip(), "rows": rows, "environment": env,
               "wall_time_s": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.device}-{args.tokens}x{args.vocab}-{args.dtype}"
    (out / f"{tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"Command: `{results['command']}`; {env['machine']}, {env['cpu_count']} CPUs, torch {env['torch']}, "
             f"device {args.device}{' (' + env['cuda'] + ')' if env['cuda'] else ''}; inputs {rows[0]['input_mb']:.0f} MB "
             f"(student + teacher logits, {args.dtype}).", "",
             "| divergence | chunk | forward+backward (median s) | saved for backward (MB) | peak memory above inputs (MB) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        peak = r["cuda_peak_above_inputs_mb"] if args.device == "cuda" else r["peak_rss_above_inputs_mb"]
        lines.append(f"| {r['divergence']} | {r['chunk_size'] or 'none'} | {r['median_s']:.3f} | "
                     f"{r['saved_for_backward_mb']:.0f} | {peak:.0f} |" if peak is not None else
                     f"| {r['divergence']} | {r['chunk_size'] or 'none'} | {r['median_s']:.3f} | "
                     f"{r['saved_for_backward_mb']:.0f} | n/a |")
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
