"""Time and memory of the divergences, plain versus chunked, forward + backward.

For each case a fresh subprocess builds student/teacher logits of shape (tokens, V), then runs
loss + backward; we record the median wall time of `--repeats` runs, the bytes autograd keeps
for the backward pass (saved tensors still alive once the loss exists, via saved_tensors_hooks) and the peak memory
held by tensors during one forward + backward above the inputs (the profiler's memory timeline
on the CPU, torch.cuda.max_memory_allocated on a GPU).

    python benchmarks/divergences/bench.py                  # CPU defaults: 2048 tokens x 32000
    python benchmarks/divergences/bench.py --tokens 8192 --vocab 128256 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from collections.abc import Callable
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness
from harness import provenance, report  # noqa: E402  (commit, command and machine of every result)


def peak_tensor_memory_mb(work: Callable[[], None], device: str) -> float:
    """Peak memory held by PyTorch tensors while `work` runs, inputs included (MB).

    On the CPU the resident-set size says little (the C allocator keeps freed memory), so the
    profiler's memory timeline is used; on a GPU, torch.cuda.max_memory_allocated.
    """
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        work()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        work()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return max(sum(per_category) for per_category in sizes) / 2**20


def peak_rss(divergence: str, tokens: int, vocab: int, chunk: int | None, device: str, dtype: str,
             hidden: int | None = None) -> dict[str, Any]:
    """Peak resident-set size of this whole process (torch included) over one forward + backward.

    Run alone in a fresh subprocess, so that nothing else this script does counts: the peak is
    that of building the inputs, the loss and its gradients (what the process needs at the most).
    """
    import resource

    import torch

    from ktransfer.divergences import get_divergence

    fn = get_divergence(divergence)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    teacher = torch.randn(tokens, vocab, device=device, dtype=dt)
    kwargs: dict[str, Any] = {"chunk_size": chunk}
    if hidden is None:
        student = torch.randn(tokens, vocab, device=device, dtype=dt, requires_grad=True)
        fn(student, teacher, **kwargs).backward()
    else:
        student = torch.randn(tokens, hidden, device=device, dtype=dt, requires_grad=True)
        head = torch.randn(vocab, hidden, device=device, dtype=dt, requires_grad=True)
        if chunk is None:
            fn(torch.nn.functional.linear(student, head), teacher, **kwargs).backward()
        else:
            fn(student, teacher, student_head=(head, None), **kwargs).backward()
    assert student.grad is not None
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(divergence: str, tokens: int, vocab: int, chunk: int | None, device: str, dtype: str,
            repeats: int, hidden: int | None = None, profile: bool = True, threads: int | None = None) -> dict[str, Any]:
    """One case, in this process (called in a fresh subprocess by `main`).

    With `hidden`, the student is given as hidden states (tokens, hidden) plus an output layer
    (vocab, hidden): "chunk none" then computes the logits with one matmul before the loss (the
    usual way), a chunk size fuses the matmul into the chunked loss (`student_head`).
    """
    import resource

    import torch

    from ktransfer.divergences import get_divergence

    base_fn = get_divergence(divergence)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    teacher = torch.randn(tokens, vocab, device=device, dtype=dt)
    kwargs: dict[str, Any] = {"chunk_size": chunk}
    if hidden is None:
        student = torch.randn(tokens, vocab, device=device, dtype=dt, requires_grad=True)
        fn = base_fn
    else:
        student = torch.randn(tokens, hidden, device=device, dtype=dt, requires_grad=True)
        head = torch.randn(vocab, hidden, device=device, dtype=dt, requires_grad=True)
        if chunk is None:
            def fn(s: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
                return base_fn(torch.nn.functional.linear(s, head), t, **kw)
        else:
            kwargs["student_head"] = (head, None)
            fn = base_fn

    # Bytes of distinct storages autograd keeps for backward, not counting the inputs' own
    # storage (chunks saved by checkpointing are views of the inputs and cost nothing).
    inputs = [student, teacher] + ([head] if hidden is not None else [])
    input_bytes = sum(t.numel() * t.element_size() for t in inputs)
    seen = {t.untyped_storage().data_ptr() for t in inputs}
    packed: list[weakref.ref[torch.Tensor]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(student, teacher, **kwargs)
    # count what is still held once the loss exists (work inside the forward pass may save
    # tensors for a moment), each storage once
    gc.collect()
    saved = 0
    for ref in packed:
        t = ref()
        if t is not None and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            saved += t.untyped_storage().nbytes()
    loss.backward()
    # the process's peak so far: building the inputs plus this first forward + backward
    first_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for t in inputs:
        t.grad = None
    peak_mb = None
    if profile:  # the profiler's timeline takes minutes at 4096 x 32000 on a CPU
        peak_mb = peak_tensor_memory_mb(lambda: fn(student, teacher, **kwargs).backward(), device) - input_bytes / 2**20
        for t in inputs:
            t.grad = None

    times, cpu_times = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = fn(student, teacher, **kwargs)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        for t in inputs:
            t.grad = None
    return {
        "divergence": divergence, "tokens": tokens, "vocab": vocab, "chunk_size": chunk, "device": device,
        "dtype": dtype, "median_s": statistics.median(times), "times_s": times,
        "median_cpu_s": statistics.median(cpu_times), "cpu_times_s": cpu_times,
        "saved_for_backward_mb": saved / 2**20, "peak_above_inputs_mb": peak_mb, "first_step_peak_rss_mb": first_rss_mb,
        "hidden": hidden, "input_mb": (teacher.numel() + student.numel() + (vocab * hidden if hidden else 0))
        * teacher.element_size() / 2**20, "loss": float(loss.detach()),
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
    parser.add_argument("--hidden", type=int, default=None,
                        help="give the student as hidden states of this size plus an output layer (fused head)")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the profiler's memory timeline (slow on large inputs); peak RSS is still measured")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    parser.add_argument("--rss", help=argparse.SUPPRESS)  # internal: peak RSS of one case, print JSON
    args = parser.parse_args()
    if args.one:
        case = json.loads(args.one)
        print(json.dumps(measure(**case)))
        return
    if args.rss:
        case = json.loads(args.rss)
        print(json.dumps(peak_rss(**case)))
        return

    from ktransfer.runner import environment

    started = time.perf_counter()
    rows = []
    for div in args.divergences:
        for chunk in args.chunks:
            case = {"divergence": div, "tokens": args.tokens, "vocab": args.vocab, "chunk": chunk or None,
                    "device": args.device, "dtype": args.dtype, "repeats": args.repeats, "hidden": args.hidden,
                    "profile": not args.no_profile}
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(case)], capture_output=True,
                                  text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            rss_case = {k: v for k, v in case.items() if k not in ("repeats", "profile")}
            proc = subprocess.run([sys.executable, __file__, "--rss", json.dumps(rss_case)], capture_output=True,
                                  text=True, check=True)
            rows[-1].update(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{div:12s} chunk={str(chunk or 'none'):>5s} {r['median_s']:.3f} s  saved {r['saved_for_backward_mb']:.0f} MB"
                  f"  peak {r['peak_above_inputs_mb'] or float('nan'):.0f} MB  peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    env = environment()
    made_by = provenance.record()
    results = {"command": made_by["command"], "provenance": made_by, "rows": rows, "environment": env,
               "wall_time_s": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.device}-{args.tokens}x{args.vocab}-{args.dtype}" + (f"-head{args.hidden}" if args.hidden else "")
    report.write_json(out / f"{tag}.json", results)
    inputs = (f"student hidden states ({args.hidden}) + output layer + teacher logits, {args.dtype}; chunk none = "
              "logits by one matmul, then the loss; a chunk size = matmul fused into the chunked loss"
              if args.hidden else f"student + teacher logits, {args.dtype}")
    lines = [f"Command: `{results['command']}`; {env['machine']}, {env['cpu_count']} CPUs, torch {env['torch']}, "
             f"device {args.device}{' (' + env['cuda'] + ')' if env['cuda'] else ''}; inputs {rows[0]['input_mb']:.0f} MB "
             f"({inputs}).", "",
             "| divergence | chunk | forward+backward (median s) | saved for backward (MB) | peak memory above inputs (MB) "
             "| peak RSS of the process (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = r["peak_above_inputs_mb"]
        lines.append(f"| {r['divergence']} | {r['chunk_size'] or 'none'} | {r['median_s']:.3f} | "
                     f"{r['saved_for_backward_mb']:.0f} | {'n/a' if peak is None else f'{peak:.0f}'} | "
                     f"{r['peak_rss_mb']:.0f} |")
    report.write_text(out / f"{tag}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
