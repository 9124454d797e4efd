"""Step time and memory of sharded (train.sharding=fsdp) against replicated (data parallel) distillation.

    torchrun --nproc_per_node N benchmarks/sharded/sharded.py --sharding fsdp --out RESULT.json [size options]

A randomly initialised Llama student learns from a Llama teacher several times its size (a
response term, forward KL) on random tokens, through the one engine (`Distiller`). The median
step time after warm-up comes from the run's own log (elapsed training time after every step);
each process records its peak accelerator memory (CUDA) or peak resident memory (CPU) and the
bytes of teacher and student parameters it holds; the main process writes them all to --out,
next to the run directories. Run it once per mode on the same machine (`gpu.sh` does both).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
from pathlib import Path
from typing import Any

import torch

from ktransfer.data import TensorDictDataset
from ktransfer.engine.distributed import leave_process_group
from ktransfer.engine.sharding import local_parameter_bytes
from ktransfer.knowledge import ResponseTerm
from ktransfer.models.causal import build_llama_student
from ktransfer.train import Distiller, OptimConfig, TrainConfig


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sharding", choices=["none", "fsdp"], required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--student-hidden", type=int, default=1024)
    p.add_argument("--student-layers", type=int, default=8)
    p.add_argument("--teacher-hidden", type=int, default=2048)
    p.add_argument("--teacher-layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="global batch (split across processes)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    p.add_argument("--precision", choices=["no", "bf16"], default="bf16")
    return p.parse_args()


def main() -> None:
    args = parse()
    torch.manual_seed(0)
    attn = "sdpa"
    student = build_llama_student(args.vocab, args.student_hidden, args.student_layers, args.heads,
                                  max_position_embeddings=args.seq, attn_implementation=attn)
    teacher = build_llama_student(args.vocab, args.teacher_hidden, args.teacher_layers, args.heads,
                                  max_position_embeddings=args.seq, attn_implementation=attn)
    sizes = {"student_parameters": sum(p.numel() for p in student.parameters()),
             "teacher_parameters": sum(p.numel() for p in teacher.parameters())}
    n = args.batch * (args.steps + 1)
    ids = torch.randint(0, args.vocab, (n, args.seq), generator=torch.Generator().manual_seed(0))
    data = TensorDictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
    run_dir = args.out.parent / f"run-{args.sharding}"
    distiller = Distiller(
        student, teacher, [ResponseTerm("forward_kl")], train_data=data, task="causal_lm",
        optim=OptimConfig(name="adamw", lr=1e-4),
        config=TrainConfig(max_steps=args.steps, batch_size=args.batch, mixed_precision=args.precision,
                           sharding=args.sharding, checkpoint_minutes=0, log_every=1),
        run_dir=run_dir, progress=False,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    distiller.fit()
    record = {
        "peak_memory_bytes": (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
                              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        "memory_kind": "cuda max_memory_allocated" if torch.cuda.is_available() else "CPU peak resident set",
        "teacher_bytes_held": local_parameter_bytes(distiller.teacher) if distiller.teacher is not None else 0,
        "student_bytes_held": local_parameter_bytes(distiller.student),
    }
    world = int(os.environ.get("WORLD_SIZE", "1"))
    records: list[Any] = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(records, record)
    else:
        records = [record]
    if int(os.environ.get("RANK", "0")) == 0:
        # the loop's own clock: elapsed training time logged after every step (the loss is read each step)
        log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        elapsed = [r["elapsed_s"] for r in log if r["split"] == "train"]
        steps = [b - a for a, b in zip(elapsed, elapsed[1:])][max(args.warmup - 1, 0):]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "sharding": args.sharding, "world_size": world, "precision": args.precision,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "sharding")},
            **sizes, "median_step_s": statistics.median(steps), "steps_timed": len(steps), "processes": records,
        }, indent=2) + "\n")
    leave_process_group()


if __name__ == "__main__":
    main()
