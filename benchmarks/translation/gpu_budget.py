"""A floor under the `--gpu` size's time, measured without a GPU: the cost of on-policy sampling.

The on-policy runs of the translation benchmark sample `max_new_tokens` tokens per example with
Hugging Face `generate`, one decoding step after another. For students this small, a decoding
step on an H100-class GPU is bound by launching its operations (Python, the dispatcher, one
kernel each), not by arithmetic. This script times `TargetsStage` sampling (as an on-policy run
samples) at the `--gpu` size's source length, number of new tokens and layer count, with the
width shrunk to 8, a 32-entry vocabulary and one row, so that arithmetic costs next to nothing:
what remains is the per-step dispatch work (the same operations, one call each) that every device
pays, whatever the batch or width. Multiplied by the number of on-policy steps of the `--gpu`
benchmark, it is a floor for that part of its time in one process: a GPU adds kernel launches and
synchronisations on top. (The same at the size's batch of 128 rows is reported beside it, to show
how little arithmetic is left.) It says how many worker processes
(`--jobs`) the GPU size needs to fit its 10-minute budget at the least.

    python benchmarks/translation/gpu_budget.py

Writes benchmarks/results/translation/gpu_budget.json and prints a summary.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (the benchmark module beside this file, as probe_lr.py takes it)


def main() -> int:
    torch.set_num_threads(1)
    from ktransfer.checkpoint import write_json_atomic
    from ktransfer.models import MODELS
    from ktransfer.runner import environment
    from ktransfer.sequence import StageContext, TargetsStage
    from ktransfer.tasks import Task

    size = bench.SIZES["gpu"]
    student = size["student"]
    batch, source, new = size["batch_size"], size["data"]["max_length"], size["max_new_tokens"]
    vocab = 32
    arch = {**student, "d_model": 8, "attention_heads": 2, "ffn_dim": 16, "vocab_size": vocab, "pad_token_id": 0,
            "eos_token_id": vocab + 1, "decoder_start_token_id": 0}  # an end-of-sequence id never drawn: every row runs
    torch.manual_seed(0)
    model = MODELS.build("seq2seq_transformer", arch).eval()
    stage = TargetsStage(sources={"student": 1.0}, seed=0,
                         generation={"max_new_tokens": new, "do_sample": True, "eos_token_id": vocab + 1})
    ctx = StageContext(student=model, teacher=None, task=Task("seq2seq"), step=0, device=torch.device("cpu"))

    def timed(rows: int) -> tuple[list[float], int]:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(4, vocab, (rows, source), generator=g)
        data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(4, vocab, (rows, 4))}
        stage(data, ctx)  # warm-up
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            out = stage(data, ctx)
            times.append(time.perf_counter() - t0)
        return times, int((out["labels"] != -100).sum())

    times, generated = timed(1)
    times_batch, _ = timed(batch)
    per_call = statistics.median(times)
    on_policy_steps = (size["steps"] - size["warm_steps"]) * len(bench.ON_POLICY)
    seeds = 3
    floor_min = per_call * on_policy_steps * seeds / 60
    made_by = bench.provenance.record()
    result = {
        "command": made_by["command"], "provenance": made_by, "environment": environment(), "threads": 1,
        "shape": {"rows": 1, "source_tokens": source, "new_tokens": new, "generated": generated,
                  "encoder_layers": student["encoder_layers"], "decoder_layers": student["decoder_layers"],
                  "d_model": 8, "vocab_size": vocab},
        "seconds_per_sampling_call": per_call, "runs_s": times, "ms_per_decoding_step": 1000 * per_call / new,
        f"seconds_per_sampling_call_{batch}_rows": statistics.median(times_batch), f"runs_s_{batch}_rows": times_batch,
        "on_policy_steps_per_seed": on_policy_steps, "seeds": seeds,
        "sampling_floor_min_one_process": floor_min,
        "jobs_needed_for_10_min_at_least": math.ceil(floor_min / 10),
    }
    out_path = ROOT / "benchmarks" / "results" / "translation" / "gpu_budget.json"
    write_json_atomic(out_path, result)
    print(f"sampling 1 row x {new} tokens: {per_call:.3f} s per call ({result['ms_per_decoding_step']:.2f} ms "
          f"per decoding step; {statistics.median(times_batch):.3f} s with {batch} rows) with a width-8 student of the "
          f"--gpu size's depth; {on_policy_steps} on-policy steps "
          f"per seed x {seeds} seeds: at least {floor_min:.1f} min of sampling in one process, so --gpu needs "
          f"--jobs {result['jobs_needed_for_10_min_at_least']} or more to fit 10 min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
