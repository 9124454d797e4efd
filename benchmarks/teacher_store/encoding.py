"""Value encodings of a k = 64 teacher output store on SmolLM2-135M over BBC News: bytes per token and loss error.

The store is built once with float32 values (`build_store`, SmolLM2-135M-Instruct as the teacher,
the first `--examples` 32-token training blocks of configs/causal/smollm2_student_alone.yaml's data),
then written again from it with float16 values and with the `fit` encoding at degrees 2, 3, 4, 6
and 8 (the float32 store's ids and tails, so only the encoding of the log-probabilities differs;
`fit` keeps its tail as float16). For each encoding: shard bytes per target token, and on every target
position the relative error, against the float32 store, of forward KL, backward KL and JSD(0.5)
(tail bucket, mean over positions) and of their gradients with respect to the student's logits
(relative L2 norm), for two students: the 10-layer cut of SmolLM2 (every 3rd layer, untrained after
the cut; close to the teacher) and a small random Llama (far from it).

One thread, about a minute on a 2-core CPU. Writes benchmarks/results/teacher_store_encoding.json.

    ktransfer data prepare bbc-news && ktransfer data prepare smollm2
    OMP_NUM_THREADS=1 python benchmarks/teacher_store/encoding.py
"""

from __future__ import annotations

import argparse
import json
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
from measure import BATCH, STUDENT, config  # noqa: E402  (the data and small student of the store benchmark)

K = 64
ENCODINGS: list[tuple[str, dict[str, Any]]] = [
    ("float32", {"values": "float32"}), ("float16", {"values": "float16"}),
    *((f"fit-{d}", {"values": "fit", "fit_degree": d}) for d in (2, 3, 4, 6, 8)),
]
DIVERGENCES: list[tuple[str, str, dict[str, float]]] = [
    ("forward_kl", "forward_kl", {}), ("backward_kl", "backward_kl", {}), ("jsd_0.5", "jsd", {"beta": 0.5}),
]


def student_logits(spec: dict[str, Any], data: Any, examples: int) -> torch.Tensor:
    """The student's logits at every target position of the first `examples` training blocks (rows, V)."""
    from ktransfer.building import build_model
    from ktransfer.tasks import Task

    torch.manual_seed(0)
    model = build_model(spec, data.info, "student").eval()
    task, rows = Task("causal_lm"), []
    with torch.no_grad():
        for start in range(0, examples, BATCH):
            batch = data.collate_fn([data.train[i] for i in range(start, min(start + BATCH, examples))])
            out = task.forward(model, batch)
            rows.append(out.logits[out.mask].float())
    return torch.cat(rows)


def losses(store: Any, logits: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
    """Each divergence's mean over the store's positions and its gradient with respect to `logits`."""
    from ktransfer.sparse_divergences import SparseTeacher, get_sparse_divergence

    parts = [store.topk(i) for i in range(store.examples)]
    teacher = SparseTeacher(*(torch.cat([p[j] for p in parts]) for j in range(3)), mass_tolerance=store.mass_tolerance())
    out = {}
    for label, name, params in DIVERGENCES:
        z = logits.detach().clone().requires_grad_(True)
        loss = get_sparse_divergence(name)(z, teacher, tail="bucket", **params)
        (grad,) = torch.autograd.grad(loss, z)
        out[label] = (float(loss.detach()), grad)
    return out


def main() -> int:
    from ktransfer.building import load_data
    from ktransfer.config import RunConfig
    from ktransfer.pretrained import smollm2_dir
    from ktransfer.store import StoreWriter, TeacherStore
    from ktransfer.store.build import build_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=16, help="training blocks of 32 tokens (default: 16)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_store_encoding.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = RunConfig.from_dict(config(args.examples, {"builder": "smollm2"}, [{"type": "labels"}]))
    data = load_data(cfg)
    students = {"cut_smollm2_every_3rd_layer": {"builder": "hf_cut", "teacher": str(smollm2_dir()), "every": 3},
                "random_small_llama": STUDENT}
    logits = {name: student_logits(spec, data, args.examples) for name, spec in students.items()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="teacher_store_encoding_") as tmp:
        folder = Path(tmp)
        build_store(cfg, folder / "float32", k=K, values="float32", batch_size=BATCH)
        source = TeacherStore.open(folder / "float32")
        reference = {name: losses(source, z) for name, z in logits.items()}
        for label, options in ENCODINGS:
            if label != "float32":
                writer = StoreWriter(folder / label, kind="topk", task="causal_lm", examples=source.examples,
                                     teacher=source.keys["teacher"], data=source.keys["data"],
                                     tokenizer=source.keys["tokenizer"], k=K, vocab_size=source.manifest["vocab_size"],
                                     shard_size=source.manifest["shard_size"], **options)
                for i in range(source.examples):
                    ids, logprobs, tail = source.topk(i)
                    writer.add(i, ids=ids, logprobs=logprobs, tail=tail)
                writer.close()
            store = TeacherStore.open(folder / label)
            row: dict[str, Any] = {"encoding": label, "bytes_per_token": round(store.bytes_per_position(), 2)}
            for student, z in logits.items():
                got = losses(store, z)
                row[student] = {
                    div: {"loss": round(got[div][0], 6),
                          "relative_error": (got[div][0] - reference[student][div][0]) / reference[student][div][0],
                          "gradient_relative_l2_error": float((got[div][1] - reference[student][div][1]).norm()
                                                              / reference[student][div][1].norm())}
                    for div, _, _ in DIVERGENCES}
            rows.append(row)
        positions = int(sum(int(source.topk(i)[0].shape[0]) for i in range(source.examples)))
    result = {"provenance": provenance.record(), "threads": 1, "teacher": "SmolLM2-135M-Instruct (float32)",
              "data": f"bbc_news_text, first {args.examples} training blocks of 32 tokens", "target_positions": positions,
              "k": K, "tail": "bucket", "reference": "the float32 store", "students": students,
              "wall_time_s": round(time.perf_counter() - t0, 1), "encodings": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        errors = "; ".join(f"{s.split('_')[0]} " + ", ".join(f"{d} {100 * row[s][d]['relative_error']:+.3f} %"
                                                            for d, _, _ in DIVERGENCES) for s in students)
        print(f"{row['encoding']:>8}: {row['bytes_per_token']:6.1f} B/token; {errors}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
