"""Teacher output store on SmolLM2-135M over BBC News: build speed, bytes per token, loss error, step time and memory.

1. Build: `build_store` (k = 64, float32 values) over the first `--examples` training blocks of
   configs/causal/smollm2_student_alone.yaml's data (32-token blocks), against the teacher's plain
   forward pass on the same batches: target tokens per second of each (setup, i.e. loading the
   teacher and fingerprinting, reported apart).
2. Size and loss error: the store re-encoded at k = 8 / 64 with float16 / float32 values (top-8 of
   the stored top-64, tail from the kept mass); bytes per target token; and on the first batches,
   forward KL(teacher || student) of the untrained student against each store (tail bucket and
   renormalize) minus the dense forward KL against the teacher's full logits.
3. Training steps of the small Llama student (configs/causal/*.yaml: hidden 256, 4 layers), each
   mode in a fresh process: labels alone ("references alone"), from the store (response from the
   k = 64 store + labels; no teacher loaded), from the store as one term (the response term with
   `label_weight`, whose cross-entropy shares the divergence's pass over the vocabulary) and with the
   live teacher (response + labels; every response forward KL with chunk_size 64): seconds per step
   after two warm-up steps, and the peak resident memory during the run (sampled every 10 ms from
   after the data is loaded, since loading the SmolLM2 tokenizer peaks higher than any training).
   The modes run in turn, `--rounds` times (A B C D A B C D ...); each figure is the median over
   rounds, each ratio the median of the rounds' ratios. Also the store stage's time per batch.

One thread (OMP_NUM_THREADS=1), a few minutes on a 2-core CPU. Writes
benchmarks/results/teacher_store.json.

    ktransfer data prepare bbc-news && ktransfer data prepare smollm2
    OMP_NUM_THREADS=1 python benchmarks/teacher_store/measure.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import provenance  # noqa: E402  (commit, command and machine of every result)

BATCH = 8
STUDENT = {"builder": "llama_student", "hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2}


def config(examples: int, teacher: dict[str, Any] | None, knowledge: list[dict[str, Any]], steps: int = 10) -> dict[str, Any]:
    """The data of configs/causal/smollm2_student_alone.yaml, cut to `examples` training blocks."""
    return {
        "task": "causal_lm",
        "data": {"name": "bbc_news_text", "max_length": 32, "prompt_length": 0, "train_size": examples,
                 "val_size": 16, "test_size": 16},
        "teacher": teacher, "student": STUDENT, "knowledge": knowledge,
        "optim": {"lr": 0.002, "weight_decay": 0.0},
        "train": {"max_steps": steps, "batch_size": BATCH, "eval_batch_size": BATCH, "eval_every": steps,
                  "log_every": 1, "metric": "perplexity", "seed": 0, "group_by_length": False},
    }


# ----------------------------------------------------------------------------------------- build and size
def build_and_size(examples: int, folder: Path) -> dict[str, Any]:
    from ktransfer.building import build_model, load_data
    from ktransfer.config import RunConfig
    from ktransfer.sparse_divergences import SparseTeacher, sparse_forward_kl
    from ktransfer.store import INDEX_KEY, StoreStage, StoreWriter, TeacherStore
    from ktransfer.store.build import build_store
    from ktransfer.tasks import Task

    cfg = RunConfig.from_dict(config(examples, {"builder": "smollm2"}, [{"type": "labels"}]))
    built = build_store(cfg, folder / "k64-float32", k=64, values="float32", batch_size=BATCH)
    data = load_data(cfg)
    teacher = build_model(cfg.teacher, data.info, "teacher").eval()
    task = Task("causal_lm")
    batches = [data.collate_fn([data.train[i] for i in range(s, min(s + BATCH, examples))])
               for s in range(0, examples, BATCH)]
    t0 = time.perf_counter()
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for i, batch in enumerate(batches):
            out = task.forward(teacher, batch)
            if i < 2:
                kept.append((out.logits, out.mask))
    plain_s = time.perf_counter() - t0

    source = TeacherStore.open(folder / "k64-float32")
    encodings: list[dict[str, Any]] = []
    torch.manual_seed(0)
    student = build_model(STUDENT, data.info, "student").eval()
    for k in (8, 64):
        for values in ("float16", "float32"):
            name = f"k{k}-{values}"
            if name != "k64-float32":
                writer = StoreWriter(folder / name, kind="topk", task="causal_lm", examples=source.examples,
                                     teacher=source.keys["teacher"], data=source.keys["data"],
                                     tokenizer=source.keys["tokenizer"], k=k, vocab_size=source.manifest["vocab_size"],
                                     values=values, shard_size=source.manifest["shard_size"])
                for i in range(source.examples):
                    ids, logprobs, _ = source.topk(i)
                    writer.add(i, ids=ids[:, :k], logprobs=logprobs[:, :k])  # tail from the kept mass
                writer.close()
            store = TeacherStore.open(folder / name)
            errors: dict[str, list[float]] = {"bucket": [], "renormalize": []}
            offset = 0
            with torch.no_grad():
                for (t_logits, mask), batch in zip(kept, batches, strict=False):
                    s_logits = task.forward(student, batch).logits.double()
                    dense = torch.nn.functional.kl_div(torch.log_softmax(s_logits, -1)[mask],
                                                       torch.log_softmax(t_logits.double(), -1)[mask],
                                                       log_target=True, reduction="sum") / int(mask.sum())
                    rows = [store.topk(offset + r) for r in range(mask.shape[0])]
                    offset += mask.shape[0]
                    ids = torch.cat([r[0] for r in rows])
                    sparse = SparseTeacher(ids, torch.cat([r[1] for r in rows]).double(),
                                           torch.cat([r[2] for r in rows]).double(), mass_tolerance=store.mass_tolerance())
                    for tail in errors:
                        loss = sparse_forward_kl(s_logits[mask], sparse, tail=tail)
                        errors[tail].append(float(loss - dense) / float(dense))
            encodings.append({"k": k, "values": values, "bytes_per_token": round(store.bytes_per_position(), 2),
                              "relative_loss_error_bucket": sum(errors["bucket"]) / len(errors["bucket"]),
                              "relative_loss_error_renormalize": sum(errors["renormalize"]) / len(errors["renormalize"])})
    stage = StoreStage(source)
    ctx = SimpleNamespace(device=torch.device("cpu"), task=task)
    t0 = time.perf_counter()
    for start, batch in zip(range(0, examples, BATCH), batches, strict=True):
        stage({**batch, INDEX_KEY: torch.arange(start, start + batch["input_ids"].shape[0])}, ctx)
    stage_ms = 1000 * (time.perf_counter() - t0) / len(batches)
    tokens = built.positions
    build_loop_s = built.total_s - built.setup_s
    return {
        "examples": examples, "target_tokens": tokens, "batch_size": BATCH,
        "build": {"setup_s": round(built.setup_s, 2), "forward_s": round(built.forward_s, 2),
                  "loop_s": round(build_loop_s, 2), "tokens_per_s": round(tokens / build_loop_s, 1)},
        "plain_forward": {"seconds": round(plain_s, 2), "tokens_per_s": round(tokens / plain_s, 1)},
        "build_slowdown": round(build_loop_s / plain_s, 3),
        "store_stage_ms_per_batch": round(stage_ms, 2),
        "encodings": encodings,
    }


# ----------------------------------------------------------------------------------------- steps, one process each
def one_mode(mode: str, examples: int, store: str, steps: int, out: str) -> None:
    """Train `steps` steps in this process and print seconds per step and peak memory as JSON."""
    from ktransfer.config import RunConfig
    from ktransfer.runner import run

    from ktransfer.building import load_data

    response = {"type": "response", "divergence": "forward_kl", "weight": 0.5, "chunk_size": 64}
    labels = {"type": "labels", "weight": 0.5}
    teacher, knowledge = {
        "alone": (None, [{"type": "labels"}]),
        "store": ({"store": store}, [response, labels]),
        "store_one_term": ({"store": store}, [{**response, "label_weight": 1.0}]),
        "live": ({"builder": "smollm2"}, [response, labels]),
    }[mode]
    cfg = RunConfig.from_dict(config(examples, teacher, knowledge, steps))
    data = load_data(cfg)  # its tokenizer's loading peaks higher than training: measured from here on
    sampler = PeakRss()
    result = run(cfg, Path(out), progress=False, overwrite=True, data=data)
    peak, start = sampler.stop()
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in records if r.get("split") == "train"}
    per_step = (elapsed[steps] - elapsed[2]) / (steps - 2)
    print(json.dumps({"mode": mode, "seconds_per_step": per_step, "steps": result.train.step,
                      "peak_rss_mib": peak, "rss_before_mib": start}))


class PeakRss:
    """The largest resident set size of this process (MiB) from now until `stop`, sampled every 10 ms."""

    def __init__(self) -> None:
        import threading

        self.start = self.peak = _rss_mib()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, _rss_mib())

    def stop(self) -> tuple[float, float]:
        self._done.set()
        self._thread.join()
        return max(self.peak, _rss_mib()), self.start


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


MODES = ("alone", "store", "store_one_term", "live")


def steps_in_processes(examples: int, store: Path, steps: int, folder: Path, rounds: int) -> dict[str, Any]:
    rows: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for _ in range(rounds):
        for mode in MODES:
            done = subprocess.run([sys.executable, __file__, "--mode", mode, "--examples", str(examples), "--store",
                                   str(store), "--steps", str(steps), "--run-dir", str(folder / mode)],
                                  capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"mode {mode} failed: {done.stderr[-2000:]}")
            rows[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    out: dict[str, Any] = {"rounds": rounds}
    for mode in MODES:
        out[mode] = {"seconds_per_step": round(median(r["seconds_per_step"] for r in rows[mode]), 4),
                     "seconds_per_step_each_round": [round(r["seconds_per_step"], 4) for r in rows[mode]],
                     "peak_rss_mib": round(median(r["peak_rss_mib"] for r in rows[mode]), 1),
                     "rss_before_training_mib": round(median(r["rss_before_mib"] for r in rows[mode]), 1)}
    for mode in MODES[1:]:
        out[f"{mode}_step_vs_alone"] = round(median(
            a["seconds_per_step"] / b["seconds_per_step"] for a, b in zip(rows[mode], rows["alone"], strict=True)), 3)
        out[f"{mode}_memory_vs_alone"] = round(median(
            a["peak_rss_mib"] / b["peak_rss_mib"] for a, b in zip(rows[mode], rows["alone"], strict=True)), 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64, help="training blocks of 32 tokens (default: 64)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per mode (default: 10)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_store.json")
    parser.add_argument("--rounds", type=int, default=3, help="times each mode's steps are timed, in turn (default: 3)")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.mode:
        one_mode(args.mode, args.examples, args.store, args.steps, args.run_dir)
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="teacher_store_") as tmp:
        folder = Path(tmp)
        sizes = build_and_size(args.examples, folder)
        steps = steps_in_processes(args.examples, folder / "k64-float32", args.steps, folder, args.rounds)
    result = {"provenance": provenance.record(), "threads": 1, "teacher": "SmolLM2-135M-Instruct (float32)",
              "student": STUDENT, "data": "bbc_news_text, 32-token blocks, first training blocks",
              "wall_time_s": round(time.perf_counter() - t0, 1), **sizes, "steps": steps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    b = sizes
    print(f"build: {b['build']['tokens_per_s']:.0f} tokens/s vs plain forward {b['plain_forward']['tokens_per_s']:.0f} "
          f"({b['build_slowdown']:.2f}x the time)")
    for e in b["encodings"]:
        print(f"k={e['k']:>2} {e['values']}: {e['bytes_per_token']:.1f} bytes/token, loss error bucket "
              f"{100 * e['relative_loss_error_bucket']:+.2f} %, renormalize {100 * e['relative_loss_error_renormalize']:+.2f} %")
    s = steps
    print(f"store stage: {b['store_stage_ms_per_batch']:.1f} ms per batch of {BATCH}")
    print(f"step: store {s['store_step_vs_alone']:.3f}x, store as one term {s['store_one_term_step_vs_alone']:.3f}x, "
          f"live teacher {s['live_step_vs_alone']:.2f}x the labels-alone step (median of {args.rounds} rounds); "
          f"peak memory: store {s['store_memory_vs_alone']:.2f}x, one term {s['store_one_term_memory_vs_alone']:.2f}x, "
          f"live {s['live_memory_vs_alone']:.2f}x")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
