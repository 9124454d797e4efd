"""Time of a distillation step in the engine (`Distiller`) against a hand-written PyTorch loop doing the same work.

Both sides do, per step: the teacher's forward under no_grad, the student's forward, the same
loss (a response term: forward KL at temperature 1 over the positions with a target), backward,
gradient clipping at norm 1 (the engine's default), an AdamW step and a constant learning-rate
schedule, on batches from a shuffling DataLoader over the same data. Students and teachers are
randomly initialised Hugging Face models from configs (no download):

* `causal`: a tiny Llama (hidden 64, 2 layers) distilled from a larger one (hidden 128, 2 layers),
  vocabulary 8,000, batch 8 x 128 tokens;
* `seq2seq`: a Marian-style translation student (d_model 64, 2 + 2 layers) from a teacher (d_model
  128), vocabulary 8,000, batch 8, source 64 and target 64 tokens.

Loss variants: `default` (logits, not chunked), `chunked` (chunk_size 256) and, for the causal LM,
`fused` (the student's output layer fused into the chunked loss: `fused_head`; the hand-written
loop does the same with `logits_to_keep=1`, a hook on the model's body and `student_head`).

Per-step time is the median interval between the starts of consecutive steps after warm-up
(everything the loop does counts: data, step, logging), in CPU time of the process (one thread,
so it is the work done; other jobs on a shared machine do not inflate it) and in wall time. Engine and hand-written runs of every
variant are interleaved (alternating which goes first) over `--repeats` rounds; the ratio is the
median over rounds of engine / hand-written. `torch.set_num_threads(1)`. Writes
`benchmarks/results/engine_overhead.json` and `.md`.

    python benchmarks/engine_overhead/bench.py                 # about 15 minutes on a quiet 2-core CPU
    python benchmarks/engine_overhead/bench.py --repeats 2 --steps 5 --variants causal:default
    python benchmarks/engine_overhead/bench.py --memory --variants causal:default causal:chunked causal:fused
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness
from harness import provenance, report  # noqa: E402  (commit, command and machine of every result)
VOCAB = 8000
VARIANTS = ("causal:default", "causal:chunked", "causal:fused", "seq2seq:default", "seq2seq:chunked")
CHUNK = 256


def build_models(kind: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(student, teacher), randomly initialised from configs."""
    import transformers

    torch.manual_seed(seed)
    if kind == "causal":
        def llama(hidden: int) -> nn.Module:
            cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           max_position_embeddings=256)
            return transformers.LlamaForCausalLM(cfg)
        return llama(64), llama(128)

    def marian(d: int) -> nn.Module:
        cfg = transformers.MarianConfig(vocab_size=VOCAB, d_model=d, encoder_layers=2, decoder_layers=2,
                                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * d,
                                        decoder_ffn_dim=2 * d, max_position_embeddings=256, pad_token_id=0,
                                        decoder_start_token_id=0, eos_token_id=1)
        return transformers.MarianMTModel(cfg)
    return marian(64), marian(128)


def build_data(kind: str, n: int = 256) -> Any:
    from ktransfer.data import TensorDictDataset

    g = torch.Generator().manual_seed(1)
    if kind == "causal":
        ids = torch.randint(2, VOCAB, (n, 128), generator=g)
        return TensorDictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
    src = torch.randint(2, VOCAB, (n, 64), generator=g)
    return TensorDictDataset(input_ids=src, attention_mask=torch.ones_like(src),
                             labels=torch.randint(2, VOCAB, (n, 64), generator=g))


def engine_run(kind: str, loss: str, student: nn.Module, teacher: nn.Module, data: Any, steps: int) -> list[tuple[float, float]]:
    """Start time of every step of a Distiller run of `steps` steps."""
    from ktransfer.knowledge import ResponseTerm
    from ktransfer.train import Distiller, OptimConfig, TrainConfig

    term = ResponseTerm("forward_kl", chunk_size=None if loss == "default" else CHUNK, fused_head=loss == "fused")
    d = Distiller(student, teacher, [term], train_data=data, task="causal_lm" if kind == "causal" else "seq2seq",
                  config=TrainConfig(max_steps=steps, batch_size=8), optim=OptimConfig(lr=1e-3), progress=False)
    starts: list[tuple[float, float]] = []
    step = d._optimizer_step

    def timed(*args: Any, **kwargs: Any) -> None:
        starts.append(_now())
        step(*args, **kwargs)

    d._optimizer_step = timed  # type: ignore[method-assign]
    d.fit()
    starts.append(_now())  # the end of the last step (fit's own wrap-up is not a step)
    return starts


def hand_run(kind: str, loss: str, student: nn.Module, teacher: nn.Module, data: Any, steps: int) -> list[tuple[float, float]]:
    """Start time of every step of the hand-written loop doing the same work."""
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from ktransfer.data.base import collate_dicts
    from ktransfer.divergences import forward_kl

    torch.manual_seed(0)
    student.train()
    teacher.eval()
    teacher.requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    scheduler = get_scheduler("constant", optimizer)
    loader = DataLoader(data, batch_size=8, shuffle=True, collate_fn=collate_dicts,
                        generator=torch.Generator().manual_seed(0))
    chunk = None if loss == "default" else CHUNK
    captured: list[Tensor] = []
    if loss == "fused":
        body = student.base_model
        body.register_forward_hook(lambda m, a, out: captured.append(out[0]))
    starts: list[tuple[float, float]] = []
    done = 0
    while done < steps:
        for batch in loader:
            starts.append(_now())
            labels = batch["labels"]
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            if kind == "seq2seq":
                inputs["labels"] = labels
            with torch.no_grad():
                t_logits = teacher(**inputs).logits
            if kind == "causal":
                t_logits, labels = t_logits[:, :-1], labels[:, 1:]
            if loss == "fused":
                captured.clear()
                student(**inputs, logits_to_keep=1)
                hidden = captured[0][:, :-1]
                value = forward_kl(hidden, t_logits, labels=labels, chunk_size=chunk,
                                   student_head=(student.lm_head.weight, student.lm_head.bias))
            else:
                s_logits = student(**inputs).logits
                if kind == "causal":
                    s_logits = s_logits[:, :-1]
                value = forward_kl(s_logits, t_logits, labels=labels, chunk_size=chunk)
            if not torch.isfinite(value):  # the same guard the engine has
                raise RuntimeError("loss is not finite")
            value.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done += 1
            if done == steps:
                break
    starts.append(_now())
    return starts


def _now() -> tuple[float, float]:
    """(wall clock, CPU time of this process): on a shared machine the CPU time is what the work costs."""
    return time.perf_counter(), time.process_time()


def per_step(starts: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """Median (wall, CPU) interval between consecutive step starts, after `warmup` steps."""
    pairs = list(zip(starts, starts[1:]))[warmup:]
    return (statistics.median(b[0] - a[0] for a, b in pairs), statistics.median(b[1] - a[1] for a, b in pairs))


def peak_rss_of_engine_steps(variant: str, steps: int = 2) -> float:
    """Peak RSS (MB) of this process after building the models and running `steps` engine steps of `variant`."""
    import resource

    kind, loss = variant.split(":")
    student, teacher = build_models(kind)
    engine_run(kind, loss, student, teacher, build_data(kind), steps)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(variants: list[str], out: Path) -> None:
    """Peak RSS of a fresh process per variant (models, data, 2 engine steps): what the loss variant costs."""
    import subprocess

    from ktransfer.runner import environment

    rows = []
    for variant in variants:
        proc = subprocess.run([sys.executable, __file__, "--rss-variant", variant], capture_output=True, text=True,
                              check=True)
        rows.append({"variant": variant, "peak_rss_mb": float(proc.stdout.strip().splitlines()[-1])})
        print(f"{variant:16s} peak RSS {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    env = environment()
    made_by = provenance.record()
    command = made_by["command"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_memory.json").write_text(json.dumps({"command": command, "provenance": made_by, "rows": rows,
                                                        "environment": env}, indent=2) + "\n")
    lines = [f"Command: `{command}`; {env['machine']}, torch {env['torch']}, transformers {env['transformers']}; peak "
             "RSS of a fresh process that builds the models and data and runs 2 engine steps (batch 8 x 128, "
             "vocabulary 8,000).", "", "| model | loss | peak RSS (MB) |", "|---|---|---:|"]
    for row in rows:
        kind, loss = row["variant"].split(":")
        lines.append(f"| {kind} | {loss} | {row['peak_rss_mb']:.0f} |")
    report.write_text(out / "engine_memory.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4,
                        help="interleaved engine / hand-written rounds (even: each side goes first equally often)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--tag", default="engine_overhead")
    parser.add_argument("--memory", action="store_true",
                        help="instead of timing: peak RSS of a fresh process per variant (engine_memory.json/.md)")
    parser.add_argument("--rss-variant", help=argparse.SUPPRESS)  # internal: one variant's peak RSS
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.rss_variant:
        print(peak_rss_of_engine_steps(args.rss_variant))
        return
    if args.memory:
        memory(args.variants, Path(args.out))
        return

    from ktransfer.runner import environment

    started = time.perf_counter()
    runners: dict[str, Callable[..., list[tuple[float, float]]]] = {"engine": engine_run, "hand": hand_run}
    initial = {kind: build_models(kind) for kind in {v.split(":")[0] for v in args.variants}}
    data = {kind: build_data(kind) for kind in initial}
    times: dict[str, dict[str, list[float]]] = {v: {"engine": [], "hand": [], "engine_wall": [], "hand_wall": []}
                                                for v in args.variants}
    for r in range(args.repeats):
        for i, variant in enumerate(args.variants):
            kind, loss = variant.split(":")
            order = ["engine", "hand"] if (r + i) % 2 == 0 else ["hand", "engine"]
            for side in order:
                student, teacher = (copy.deepcopy(m) for m in initial[kind])
                starts = runners[side](kind, loss, student, teacher, data[kind], args.warmup + args.steps)
                wall, cpu = per_step(starts, args.warmup)
                times[variant][side].append(cpu)
                times[variant][f"{side}_wall"].append(wall)
            e, h = times[variant]["engine"][-1], times[variant]["hand"][-1]
            print(f"round {r + 1} {variant:16s} CPU engine {e * 1e3:7.1f} ms  hand {h * 1e3:7.1f} ms  ratio {e / h:.3f}"
                  f"  (wall {times[variant]['engine_wall'][-1] / times[variant]['hand_wall'][-1]:.3f})", flush=True)
    rows = []
    for variant in args.variants:
        e, h = times[variant]["engine"], times[variant]["hand"]
        ew, hw = times[variant]["engine_wall"], times[variant]["hand_wall"]
        ratios = [a / b for a, b in zip(e, h, strict=True)]
        wall_ratios = [a / b for a, b in zip(ew, hw, strict=True)]
        rows.append({"variant": variant, "engine_cpu_ms": [x * 1e3 for x in e], "hand_cpu_ms": [x * 1e3 for x in h],
                     "engine_wall_ms": [x * 1e3 for x in ew], "hand_wall_ms": [x * 1e3 for x in hw],
                     "ratios": ratios, "wall_ratios": wall_ratios, "median_engine_ms": statistics.median(e) * 1e3,
                     "median_hand_ms": statistics.median(h) * 1e3, "median_ratio": statistics.median(ratios),
                     "median_wall_ratio": statistics.median(wall_ratios),
                     "geomean_ratio": statistics.geometric_mean(ratios)})
    env = environment()
    made_by = provenance.record()
    results = {"command": made_by["command"], "provenance": made_by, "rows": rows, "environment": env, "threads": 1,
               "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
               "wall_time_s": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / f"{args.tag}.json", results)
    lines = [f"Command: `{results['command']}`; {env['machine']}, {env['cpu_count']} CPUs, "
             f"1 thread, torch {env['torch']}, transformers {env.get('transformers', '?')}; per-step time = CPU time of "
             f"the process (steadier than wall time when the machine is shared; wall-time ratios in the last column), "
             f"median over {args.steps} steps after {args.warmup} warm-up steps; {args.repeats} interleaved rounds, "
             "medians reported.", "",
             "| model | loss | engine (CPU ms/step) | hand-written (CPU ms/step) | engine / hand-written (CPU, median) "
             "| (CPU, geometric mean) | engine / hand-written (wall, median) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        kind, loss = row["variant"].split(":")
        lines.append(f"| {kind} | {loss} | {row['median_engine_ms']:.1f} | {row['median_hand_ms']:.1f} | "
                     f"{row['median_ratio']:.3f} | {row['geomean_ratio']:.3f} | {row['median_wall_ratio']:.3f} |")
    report.write_text(out / f"{args.tag}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
