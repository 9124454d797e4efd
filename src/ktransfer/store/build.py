"""`ktransfer teacher-outputs build`: run a config's teacher once over its training split and write a store.

Keys recorded in the manifest: the teacher's weights digest (`model_fingerprint`), the training
examples' content (`examples_digest`), the data's tokenizer digest (`tokenizer_sha256` of the data's
info). A build into a folder that already holds part of the same store computes only the examples
of unfinished shards; one holding another store (other teacher, data, k, values) is refused.
Under torchrun or accelerate launch the processes share the batches and the main process writes
(`ktransfer.store.processes`); with `train.sharding: fsdp` the teacher is sharded across them.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ktransfer.building import build_model, load_data
from ktransfer.checks import check_data_fits_task
from ktransfer.config import RunConfig
from ktransfer.engine import sharding
from ktransfer.engine.batches import TEACHER_PREFIX, split_batch
from ktransfer.registry import ConfigError
from ktransfer.sequence.cache import model_fingerprint
from ktransfer.sparse_divergences import topk_log_probs
from ktransfer.store.captures import CaptureRecorder, CaptureStoreError
from ktransfer.store.fit import DEFAULT_DEGREE
from ktransfer.store.format import StoreWriter, examples_digest, teacher_tokens_digest
from ktransfer.store.outline import describe_modules
from ktransfer.store.processes import BuildProcesses, join_processes, place_teacher
from ktransfer.tasks import Task


@dataclass
class BuildReport:
    """What a build did: examples computed (0 when the store was already complete), target positions
    written, and seconds: loading data and teacher and fingerprinting them (`setup_s`), in the teacher's
    passes (`forward_s`: its forward passes and the top-k of their outputs), and in the whole build
    (`total_s`, the rest being gathering and writing).
    Under several processes: their number (`world_size`) and the bytes of teacher parameters this
    process held (`teacher_bytes`, about 1/N of the teacher's when it is sharded)."""

    directory: Path
    examples: int
    computed: int
    positions: int
    forward_s: float
    total_s: float
    setup_s: float = 0.0
    world_size: int = 1
    teacher_bytes: int = 0


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

    Under a launcher with several processes the batches are shared out among them and the main
    process writes the store, the same store one process writes (:mod:`ktransfer.store.processes`);
    with `train.sharding: fsdp` the teacher is sharded per layer across them.

    `stop_after_shards` ends the build after writing that many shards, as if killed (for tests).
    """
    t0 = time.perf_counter()
    if cfg.teacher is None or "store" in cfg.teacher:
        raise ConfigError("teacher: building a store needs a teacher model section (builder or from_run), "
                          f"got {cfg.teacher!r}")
    for name, given in (("hidden", hidden), ("attentions", attentions)):
        if isinstance(given, str):
            raise ConfigError(f"{name}: expected a list of module names, got the string {given!r}")
    return _build(cfg, Path(out), join_processes(cfg.train.sharding), t0, k=k, values=values, fit_degree=fit_degree,
                  shard_size=shard_size, batch_size=batch_size, stop_after_shards=stop_after_shards,
                  hidden=hidden, attentions=attentions, feature_values=feature_values,
                  captures_of_terms=captures_of_terms)


def _build(cfg: RunConfig, out: Path, processes: BuildProcesses, t0: float, *, k: int, values: str,
           fit_degree: int, shard_size: int, batch_size: int | None, stop_after_shards: int | None,
           hidden: Sequence[str], attentions: Sequence[str], feature_values: str,
           captures_of_terms: bool) -> BuildReport:
    """`build_store` in this process, one of `processes`."""
    data = load_data(cfg)
    check_data_fits_task(cfg, data.info)
    # seeded as a run seeds it: a teacher without weights is the run's, and the same on every process
    torch.manual_seed(cfg.train.seed)
    teacher = build_model(cfg.teacher, data.info, "teacher").eval().requires_grad_(False)
    task = Task(cfg.task)
    train = data.train
    batch_size = batch_size or cfg.train.eval_batch_size
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
    # what the manifest records of the whole teacher, read before it is sharded (no gathers needed)
    fingerprint = model_fingerprint(teacher) if processes.is_main else ""
    outline = describe_modules(teacher)
    teacher = place_teacher(teacher, processes, cfg.train.shard_layers)
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
        batch = {key: v.to(processes.device) if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
        teacher_batch = split_batch(batch)[1]
        with torch.no_grad(), recorder.capture if recorder is not None else contextlib.nullcontext():
            result = task.forward(teacher, teacher_batch)
        if recorder is not None:
            try:
                per_example[:] = [{key: v.cpu() for key, v in row.items()}
                                  for row in recorder.split(batch.get("attention_mask"))]
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
        header["captures"] = {"values": feature_values, "items": recorder.items, "outline": outline}
    if own_tokens:
        header.update(teacher_tokenizer=str(data.info.get("teacher_tokenizer_sha256")),
                      teacher_tokenization=teacher_tokens_digest(train))

    def rows(chunk: list[int]) -> dict[str, Any]:
        """The teacher's outputs on `chunk`, on the CPU, as the writer takes them."""
        logits, mask = teacher_outputs(chunk)
        captures = list(per_example) if recorder is not None else None
        if header["kind"] == "logits":
            return {"chunk": chunk, "logits": logits.cpu(), "captures": captures}
        if mask is None:
            mask = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
        ids, logprobs, tail = topk_log_probs(logits, k, mask=mask)  # every target position of the batch at once
        counts = mask.reshape(mask.shape[0], -1).sum(-1).tolist()
        following = next_token_log_probs(logits, next_ids[0], mask) if own_tokens else None
        return {"chunk": chunk, "counts": counts, "ids": ids.cpu(), "logprobs": logprobs.cpu(), "tail": tail.cpu(),
                "captures": captures, "next_logprobs": following}

    def new_writer() -> StoreWriter:
        return StoreWriter(
            out, task=cfg.task, examples=len(train), teacher=fingerprint, data=examples_digest(train),
            tokenizer=data.info.get("tokenizer_sha256"), values=values, fit_degree=fit_degree, shard_size=shard_size,
            settings={"teacher": cfg.teacher, "data": cfg.data, "k": k, "values": values,
                      "classes": data.info.get("classes"),
                      **({"fit_degree": fit_degree} if values == "fit" else {}),
                      **({"hidden": list(hidden), "attentions": list(attentions), "feature_values": feature_values}
                         if recorder is not None else {})}, **header,
        )

    writer, missing = _open_on_main(processes, new_writer)
    forward_s, positions, done = 0.0, 0, 0
    shards_before = len(writer.shards) if writer is not None else 0
    setup_s = time.perf_counter() - t0
    chunks = [missing[start:start + batch_size] for start in range(0, len(missing), batch_size)]
    for dealt in processes.rounds(chunks):
        mine = dealt[processes.rank] if processes.rank < len(dealt) else None
        t1 = time.perf_counter()
        result = rows(mine if mine is not None else dealt[0])  # a spare pass keeps the sharded layers in step
        forward_s += time.perf_counter() - t1
        gathered = processes.gather(result if mine is not None else None)
        stop: BaseException | bool = False
        if writer is not None:
            try:
                for got in gathered or []:
                    if got is not None:
                        positions += _write(writer, got, header["kind"])
                stop = stop_after_shards is not None and len(writer.shards) - shards_before >= stop_after_shards
            except Exception as e:  # the other processes stop with the same error instead of waiting
                stop = e
        stop = processes.from_main(stop)
        done += sum(len(c) for c in dealt)
        if isinstance(stop, BaseException):
            raise stop
        if stop:
            return BuildReport(out, len(train), done, positions, forward_s, time.perf_counter() - t0, setup_s,
                               processes.world, sharding.local_parameter_bytes(teacher))
    if writer is not None:
        writer.close()
    return BuildReport(out, len(train), len(missing), positions, forward_s, time.perf_counter() - t0, setup_s,
                       processes.world, sharding.local_parameter_bytes(teacher))


def _open_on_main(processes: BuildProcesses,
                  new_writer: Callable[[], StoreWriter]) -> tuple[StoreWriter | None, list[int]]:
    """The store's writer on the main process (None elsewhere) and, on every process, the examples it lacks.

    A store that cannot be opened (one made from something else) stops every process with its error.
    """
    writer: StoreWriter | None = None
    shared: list[int] | BaseException = []
    if processes.is_main:
        try:
            writer = new_writer()
            shared = writer.missing()
        except Exception as e:  # noqa: BLE001 - handed to every process, then raised
            shared = e
    shared = processes.from_main(shared)
    if isinstance(shared, BaseException):
        raise shared
    return writer, shared


def _write(writer: StoreWriter, got: dict[str, Any], kind: str) -> int:
    """Add one batch's rows (`rows` of `_build`) to the store; the number of target positions it held."""
    chunk, captures = got["chunk"], got["captures"]
    if kind == "logits":
        for row, index in enumerate(chunk):
            writer.add(index, logits=got["logits"][row], captures=captures[row] if captures is not None else None)
        return 0
    writer.add_rows(chunk, got["counts"], ids=got["ids"], logprobs=got["logprobs"], tail=got["tail"],
                    captures=captures, next_logprobs=got["next_logprobs"])  # checked once, as one batch
    return int(sum(got["counts"]))


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
