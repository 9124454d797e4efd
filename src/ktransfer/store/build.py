"""`ktransfer teacher-outputs build`: run a config's teacher once over its training split and write a store.

Keys recorded in the manifest: the teacher's weights digest (`model_fingerprint`), the training
examples' content (`examples_digest`), the data's tokenizer digest (`tokenizer_sha256` of the data's
info). A build into a folder that already holds part of the same store computes only the examples
of unfinished shards; one holding another store (other teacher, data, k, values) is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ktransfer.building import build_model, load_data
from ktransfer.checks import check_data_fits_task
from ktransfer.config import RunConfig
from ktransfer.engine.batches import TEACHER_PREFIX, split_batch
from ktransfer.registry import ConfigError
from ktransfer.sequence.cache import model_fingerprint
from ktransfer.sparse_divergences import topk_log_probs
from ktransfer.store.fit import DEFAULT_DEGREE
from ktransfer.store.format import StoreWriter, examples_digest
from ktransfer.tasks import Task


@dataclass
class BuildReport:
    """What a build did: examples computed (0 when the store was already complete), target positions
    written, and seconds: loading data and teacher and fingerprinting them (`setup_s`), in the teacher's
    forward passes (`forward_s`), and in the whole build (`total_s`, the rest being top-k and writing)."""

    directory: Path
    examples: int
    computed: int
    positions: int
    forward_s: float
    total_s: float
    setup_s: float = 0.0


def build_store(cfg: RunConfig, out: str | Path, *, k: int = 64, values: str = "float32", fit_degree: int = DEFAULT_DEGREE,
                shard_size: int = 1024, batch_size: int | None = None,
                stop_after_shards: int | None = None) -> BuildReport:
    """Run `cfg`'s teacher over `cfg`'s training split and write (or finish) the store at `out`.

    `values`: float32, float16 or fit (top-k only: a polynomial of degree `fit_degree` per position,
    see :mod:`ktransfer.store.format`).
    `stop_after_shards` ends the build after writing that many shards, as if killed (for tests).
    """
    t0 = time.perf_counter()
    if cfg.teacher is None or "store" in cfg.teacher:
        raise ConfigError("teacher: building a store needs a teacher model section (builder or from_run), "
                          f"got {cfg.teacher!r}")
    data = load_data(cfg)
    check_data_fits_task(cfg, data.info)
    teacher = build_model(cfg.teacher, data.info, "teacher").eval().requires_grad_(False)
    task = Task(cfg.task)
    train = data.train
    batch_size = batch_size or cfg.train.eval_batch_size

    def teacher_outputs(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = data.collate_fn([train[i] for i in indices])
        if any(key.startswith(TEACHER_PREFIX) for key in batch):
            raise ConfigError("the teacher reads inputs of its own (teacher_* keys): a store holds outputs on the "
                              "student's positions, so teacher and student must read the same inputs")
        with torch.no_grad():
            result = task.forward(teacher, split_batch(batch)[1])
        return result.logits, result.mask

    probe, _ = teacher_outputs([0])
    header: dict[str, Any] = {"kind": "logits", "num_classes": int(probe.shape[-1])}
    if cfg.task != "classification":
        vocab = int(probe.shape[-1])
        if not 1 <= k <= vocab:
            raise ConfigError(f"k must be in [1, {vocab}] (the teacher's vocabulary), got {k}")
        header = {"kind": "topk", "k": k, "vocab_size": vocab}
    writer = StoreWriter(
        out, task=cfg.task, examples=len(train), teacher=model_fingerprint(teacher), data=examples_digest(train),
        tokenizer=data.info.get("tokenizer_sha256"), values=values, fit_degree=fit_degree, shard_size=shard_size,
        settings={"teacher": cfg.teacher, "data": cfg.data, "k": k, "values": values,
                  **({"fit_degree": fit_degree} if values == "fit" else {})}, **header,
    )
    missing = writer.missing()
    forward_s, positions, shards_before = 0.0, 0, len(writer.shards)
    setup_s = time.perf_counter() - t0
    for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        t1 = time.perf_counter()
        logits, mask = teacher_outputs(chunk)
        forward_s += time.perf_counter() - t1
        if header["kind"] == "logits":
            for row, index in enumerate(chunk):
                writer.add(index, logits=logits[row])
        else:  # the top-k of every target position of the batch at once, then split by example
            if mask is None:
                mask = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
            ids, logprobs, tail = topk_log_probs(logits, k, mask=mask)
            counts = mask.reshape(mask.shape[0], -1).sum(-1).tolist()
            positions += sum(counts)
            writer.add_rows(chunk, counts, ids=ids, logprobs=logprobs, tail=tail)  # checked once, as one batch
        if stop_after_shards is not None and len(writer.shards) - shards_before >= stop_after_shards:
            return BuildReport(Path(out), len(train), start + len(chunk), positions, forward_s,
                               time.perf_counter() - t0, setup_s)
    writer.close()
    return BuildReport(Path(out), len(train), len(missing), positions, forward_s, time.perf_counter() - t0, setup_s)
