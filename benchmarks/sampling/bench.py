"""On-policy sampling throughput (generated tokens per second) with and without the KV cache.

The student samples its own targets through the library's sampling code (a `TargetsStage` with
sources {student: 1}, i.e. Hugging Face `generate` with do_sample, as an on-policy run does),
64 new tokens per example (the end-of-sequence id is set out of the vocabulary so that every row
generates all 64), with `generation.use_cache` true or false. Models are randomly initialised
from configs (no download):

* `causal`: a small Llama (hidden 256, 4 layers, vocabulary 8,000);
* `seq2seq`: a translation-sized Marian (d_model 256, 3 + 3 layers, vocabulary 8,000);

each with prompts (sources) of `--prompts` tokens (32 and 128 by default), in batches of
`--batches` rows (8, and 32 = the on-policy batch of the translation benchmark, by default).

Cached and uncached runs are interleaved over `--repeats` rounds, one thread, timed in CPU time
of the process (the machine is shared; wall time is in the JSON too). Writes
`benchmarks/results/sampling_kv_cache.json` and `.md`.

    python benchmarks/sampling/bench.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness
from harness import provenance, report  # noqa: E402  (commit, command and machine of every result)
VOCAB = 8000
NEW_TOKENS = 64


def build(kind: str) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    if kind == "causal":
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                       pad_token_id=0)
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.MarianConfig(vocab_size=VOCAB, d_model=256, encoder_layers=3, decoder_layers=3,
                                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024,
                                    decoder_ffn_dim=1024, max_position_embeddings=256, pad_token_id=0,
                                    decoder_start_token_id=0, forced_eos_token_id=None)
    return transformers.MarianMTModel(cfg).eval()


def batch_of(kind: str, prompt: int, rows: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (rows, prompt), generator=g)
    if kind == "causal":
        labels = torch.cat([torch.full_like(ids, -100), torch.randint(2, VOCAB, (rows, 4), generator=g)], 1)
        ids = torch.cat([ids, labels[:, prompt:]], 1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(2, VOCAB, (rows, 4), generator=g)}


def sample(kind: str, model: nn.Module, use_cache: bool, prompt: int, rows: int) -> tuple[float, float, int]:
    """(wall s, CPU s, generated tokens) of one on-policy sampling of the batch by the student."""
    from ktransfer.sequence import StageContext, TargetsStage
    from ktransfer.tasks import Task

    stage = TargetsStage(sources={"student": 1.0}, seed=0,
                         generation={"max_new_tokens": NEW_TOKENS, "do_sample": True, "use_cache": use_cache,
                                     "eos_token_id": VOCAB + 1})
    task = Task("causal_lm" if kind == "causal" else "seq2seq")
    ctx = StageContext(student=model, teacher=None, task=task, step=0, device=torch.device("cpu"))
    batch = batch_of(kind, prompt, rows)
    w0, c0 = time.perf_counter(), time.process_time()
    out = stage(batch, ctx)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    generated = int((out["labels"] != -100).sum())
    return wall, cpu, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=["causal", "seq2seq"], choices=["causal", "seq2seq"])
    parser.add_argument("--prompts", type=int, nargs="+", default=[32, 128],
                        help="prompt (causal) or source (seq2seq) lengths in tokens")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32], help="rows sampled at once")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    from ktransfer.runner import environment

    started = time.perf_counter()
    models = {kind: build(kind) for kind in args.kinds}
    for kind in args.kinds:  # warm-up (first-call costs of generate)
        sample(kind, models[kind], True, args.prompts[0], args.batches[0])
    cases = [(kind, batch, prompt) for kind in args.kinds for batch in args.batches for prompt in args.prompts]
    got: dict[tuple[str, int, int], dict[bool, list[tuple[float, float, int]]]] = {
        c: {True: [], False: []} for c in cases}
    for r in range(args.repeats):
        for i, (kind, batch, prompt) in enumerate(cases):
            for use_cache in ((True, False) if (r + i) % 2 == 0 else (False, True)):
                got[kind, batch, prompt][use_cache].append(sample(kind, models[kind], use_cache, prompt, batch))
                wall, cpu, n = got[kind, batch, prompt][use_cache][-1]
                print(f"round {r + 1} {kind:8s} batch {batch:3d} prompt {prompt:4d} use_cache={use_cache!s:5s} {n} "
                      f"tokens  CPU {cpu:.2f} s ({n / cpu:.0f} tokens/s)  wall {wall:.2f} s", flush=True)
    rows = []
    for kind, batch, prompt in cases:
        row: dict[str, Any] = {"kind": kind, "new_tokens": NEW_TOKENS, "batch": batch, "prompt": prompt}
        for use_cache, name in ((True, "cache"), (False, "no_cache")):
            runs = got[kind, batch, prompt][use_cache]
            row[f"{name}_runs"] = [{"wall_s": w, "cpu_s": c, "tokens": n} for w, c, n in runs]
            row[f"{name}_tokens_per_cpu_s"] = statistics.median(n / c for _, c, n in runs)
            row[f"{name}_tokens_per_wall_s"] = statistics.median(n / w for w, _, n in runs)
        row["speedup_cpu"] = row["cache_tokens_per_cpu_s"] / row["no_cache_tokens_per_cpu_s"]
        row["speedup_wall"] = row["cache_tokens_per_wall_s"] / row["no_cache_tokens_per_wall_s"]
        rows.append(row)
    env = environment()
    made_by = provenance.record()
    results = {"command": made_by["command"], "provenance": made_by, "rows": rows, "environment": env, "threads": 1,
               "wall_time_s": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "sampling_kv_cache.json", results)
    lines = [f"Command: `{results['command']}`; {env['machine']}, {env['cpu_count']} CPUs, "
             f"1 thread, torch {env['torch']}, transformers {env['transformers']}; on-policy sampling by the student "
             f"through TargetsStage, {NEW_TOKENS} new tokens per row; tokens per second "
             f"of CPU time of the process (median of {args.repeats} interleaved runs; wall-time speed-up in the last "
             "column).", "",
             "| model | batch | prompt / source (tokens) | with KV cache (tokens/s) | without (tokens/s) "
             "| speed-up (CPU) | speed-up (wall) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"causal": "Llama, hidden 256, 4 layers", "seq2seq": "Marian, d_model 256, 3 + 3 layers"}
    for row in rows:
        lines.append(f"| {names[row['kind']]} | {row['batch']} | {row['prompt']} | {row['cache_tokens_per_cpu_s']:.0f} | "
                     f"{row['no_cache_tokens_per_cpu_s']:.0f} | {row['speedup_cpu']:.1f}x | {row['speedup_wall']:.1f}x |")
    report.write_text(out / "sampling_kv_cache.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
