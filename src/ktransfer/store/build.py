"""`ktransfer teacher-outputs build`: run a config's teacher once over its training split and write a store.

Keys recorded in the manifest: the teacher's weights digest (`model_fingerprint`), the training
examples' content (`examples_digest`), the data's tokenizer digest (`tokenizer_sha256` of the data's
info). A build into a folder that already holds part of the same store computes only the examples
of unfinished shards; one holding another store (other teacher, data, k, values) is refused.
With `hidden` / `attentions` module names it also stores what those teacher modules give per example
(`ktransfer.store.captures`), so that feature, relation and attention terms train from the store.

On a dataset with `teacher_tokenizer` (the teacher reads its own tokens of each text) the teacher runs on
its own tokens (`teacher_input_ids`, `teacher_attention_mask`, `teacher_labels`) and the store holds its
target positions, with its log-probability of each next token, for the `cross_tokenizer` term
(a ``teacher_tokens`` store, see `ktransfer.store.format`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
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
from ktransfer.store.captures import CaptureRecorder, CaptureStoreError
from ktransfer.store.fit import DEFAULT_DEGREE
from ktransfer.store.format import StoreWriter, examples_digest, teacher_tokens_digest
from ktransfer.store.outline import describe_modules
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
                shard_size: int = 1024, batch_size: int | None = None, stop_after_shards: int | None = None,
                hidden: Sequence[str] = (), attentions: Sequence[str] = (),
                feature_values: str = "float16", captures_of_terms: bool = False) -> BuildReport:
    """Run `cfg`'s teacher over `cfg`'s training split and write (or finish) the store at `out`.

    `values`: float32, float16 or fit (top-k only: a polynomial of degree `fit_degree` per position,
    see :mod:`ktransfer.store.format`).
    `hidden` / `attentions`: teacher module names whose hidden states / attention maps are stored too,
    per example, in `feature_values` ("float16" or "float32"); `captures_of_terms` adds those that `cfg`'s
    knowledge terms and selector read (`ktransfer.store.reads`), so that `cfg` trains from the store.

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
    for name, given in (("hidden", hidden), ("attentions", attentions)):
        if isinstance(given, str):
            raise ConfigError(f"{name}: expected a list of module names, got the string {given!r}")
    if captures_of_terms:
        from ktransfer.store.reads import captures_read_by

        student = build_model(cfg.student, data.info, "student")
        extra_hidden, extra_attentions = captures_read_by(cfg.knowledge, cfg.selector, student, teacher)
        hidden = [*hidden, *(h for h in extra_hidden if h not in hidden)]
        attentions = [*attentions, *(a for a in extra_attentions if a not in attentions)]
    own_tokens = data.info.get("teacher_tokenizer") is not None
    if own_tokens and (hidden or attentions):
        raise ConfigError("hidden / attentions: a store on the teacher's own tokens (data.teacher_tokenizer) holds "
                          "outputs only; the cross_tokenizer term reads no teacher internals")
    recorder = None
    if hidden or attentions:
        try:
            recorder = CaptureRecorder(teacher, hidden, attentions, feature_values)
        except CaptureStoreError as e:
            raise ConfigError(str(e)) from e
    per_example: list[dict[str, torch.Tensor]] = []
    next_ids: list[torch.Tensor] = []  # on the teacher's own tokens: the token each position predicts

    def teacher_outputs(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = data.collate_fn([train[i] for i in indices])
        if not own_tokens and any(key.startswith(TEACHER_PREFIX) for key in batch):
            raise ConfigError("the teacher reads inputs of its own (teacher_* keys): a store holds outputs on the "
                              "student's positions, so teacher and student must read the same inputs (a text "
                              "dataset with data.teacher_tokenizer is the exception: its store is on the teacher's "
                              "tokens)")
        teacher_batch = split_batch(batch)[1]
        with torch.no_grad(), recorder.capture if recorder is not None else contextlib.nullcontext():
            result = task.forward(teacher, teacher_batch)
        if recorder is not None:
            try:
                per_example[:] = recorder.split(batch.get("attention_mask"))
            except CaptureStoreError as e:
                raise ConfigError(str(e)) from e
        if own_tokens:
            next_ids[:] = [teacher_batch["input_ids"][..., 1:]]
        return result.logits, result.mask

    probe, _ = teacher_outputs([0])
    header: dict[str, Any] = {"kind": "logits", "num_classes": int(probe.shape[-1])}
    if cfg.task != "classification":
        vocab = int(probe.shape[-1])
        if not 1 <= k <= vocab:
            raise ConfigError(f"k must be in [1, {vocab}] (the teacher's vocabulary), got {k}")
        header = {"kind": "topk", "k": k, "vocab_size": vocab}
    if recorder is not None:
        assert recorder.items is not None
        header["captures"] = {"values": feature_values, "items": recorder.items, "outline": describe_modules(teacher)}
    if own_tokens:
        header.update(teacher_tokenizer=str(data.info.get("teacher_tokenizer_sha256")),
                      teacher_tokenization=teacher_tokens_digest(train))
    writer = StoreWriter(
        out, task=cfg.task, examples=len(train), teacher=model_fingerprint(teacher), data=examples_digest(train),
        tokenizer=data.info.get("tokenizer_sha256"), values=values, fit_degree=fit_degree, shard_size=shard_size,
        settings={"teacher": cfg.teacher, "data": cfg.data, "k": k, "values": values,
                  "classes": data.info.get("classes"),
                  **({"fit_degree": fit_degree} if values == "fit" else {}),
                  **({"hidden": list(hidden), "attentions": list(attentions), "feature_values": feature_values}
                     if recorder is not None else {})}, **header,
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
                writer.add(index, logits=logits[row], captures=per_example[row] if recorder else None)
        else:  # the top-k of every target position of the batch at once, then split by example
            if mask is None:
                mask = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
            ids, logprobs, tail = topk_log_probs(logits, k, mask=mask)
            counts = mask.reshape(mask.shape[0], -1).sum(-1).tolist()
            positions += sum(counts)
            following = next_token_log_probs(logits, next_ids[0], mask) if own_tokens else None
            writer.add_rows(chunk, counts, ids=ids, logprobs=logprobs, tail=tail,  # checked once, as one batch
                            captures=list(per_example) if recorder else None, next_logprobs=following)
        if stop_after_shards is not None and len(writer.shards) - shards_before >= stop_after_shards:
            return BuildReport(Path(out), len(train), start + len(chunk), positions, forward_s,
                               time.perf_counter() - t0, setup_s)
    writer.close()
    return BuildReport(Path(out), len(train), len(missing), positions, forward_s, time.perf_counter() - t0, setup_s)


def next_token_log_probs(logits: torch.Tensor, next_ids: torch.Tensor, mask: torch.Tensor,
                         chunk: int = 256) -> torch.Tensor:
    """``log_softmax(logits)[next id]`` at the positions where `mask` is true, in order (N,), float32 at least.

    `logits` (B, T, V), `next_ids` and `mask` (B, T); computed `chunk` positions at a time, so nothing of size
    N x V is copied.
    """
    where = mask.to(logits.device).nonzero()
    next_ids = next_ids.to(logits.device)
    out = torch.empty(int(where.shape[0]), dtype=torch.promote_types(logits.dtype, torch.float32))
    with torch.no_grad():
        for start in range(0, int(where.shape[0]), chunk):
            rows = where[start:start + chunk]
            z = logits[rows[:, 0], rows[:, 1]].to(out.dtype)
            picked = z.gather(-1, next_ids[rows[:, 0], rows[:, 1]].unsqueeze(-1)).squeeze(-1)
            out[start:start + len(rows)] = (picked - torch.logsumexp(z, dim=-1)).cpu()
    return out
