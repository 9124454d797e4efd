"""Training from a store: each batch carries its examples' indices, and a batch stage attaches their stored outputs.

`IndexedDataset` adds every example's index in the training split (key ``index``) and
`IndexedCollate` keeps those indices out of the dataset's own collate function, so any dataset
works. `StoreStage` (a batch stage of `ktransfer.engine.stages`) takes the indices out of the batch
and puts the teacher's outputs under `STORED_TEACHER_KEY`: class logits (B, C), or a
`SparseTeacher` laid over the batch's aligned positions (padding and positions without a target get
a placeholder the losses mask out); a store built on the teacher's own tokens gives a
`ktransfer.cross_tokenizer.sparse.TeacherTokensSparse` over the teacher's positions instead (those of
``teacher_labels``), with the teacher's next-token log-probabilities, for the `cross_tokenizer` term.
A store holding the teacher's internals (`ktransfer.store.captures`) also serves those the run's
terms read, under `STORED_CAPTURES_KEY`, and a module outline of the teacher for the terms to
resolve their layers. No teacher model is involved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ktransfer.capture import parse_spec
from ktransfer.cross_tokenizer.sparse import TeacherTokensSparse
from ktransfer.knowledge.base import STORED_CAPTURES_KEY, STORED_TEACHER_KEY
from ktransfer.sparse_divergences import SparseTeacher
from ktransfer.store.captures import CaptureStoreError, place
from ktransfer.store.format import StoreError, TeacherStore
from ktransfer.store.outline import outline_module
from ktransfer.tasks import IGNORE_INDEX

INDEX_KEY = "index"


class IndexedDataset(Dataset):
    """`dataset` whose rows also hold their own index (key ``index``); other attributes pass through."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.dataset[i]
        if INDEX_KEY in row:
            raise ValueError(f"dataset rows already have a key '{INDEX_KEY}'; training from a store needs it free")
        return {**row, INDEX_KEY: i}

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


class IndexedCollate:
    """A collate function that batches the rows' ``index`` itself and the rest with `collate_fn`."""

    def __init__(self, collate_fn: Callable[[list[Any]], dict[str, Any]]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        indices = torch.tensor([int(r[INDEX_KEY]) for r in rows], dtype=torch.int64)
        batch = self.collate_fn([{k: v for k, v in r.items() if k != INDEX_KEY} for r in rows])
        return {**batch, INDEX_KEY: indices}


def target_mask(batch: dict[str, Any], task: str, key: str = "labels") -> Tensor:
    """True at the aligned positions that have a target (causal LM: position t predicts token t+1); `key` names
    the labels (``teacher_labels`` for a store on the teacher's own tokens)."""
    labels = batch.get(key)
    if not isinstance(labels, Tensor):
        raise StoreError(f"a {task} batch needs '{key}' to place the stored teacher's positions")
    if task == "causal_lm":
        labels = labels[..., 1:]
    return labels != IGNORE_INDEX


class StoreStage:
    """A batch stage that attaches a store's teacher outputs for the batch's examples.

    `provides_teacher_outputs` tells the engine that the run's teacher-reading terms are served
    without a teacher model. Given a mapping {name: store}, it serves several named teachers
    (`teacher_names`): the batch then holds {name: outputs} under `STORED_TEACHER_KEY`.
    Stateless: nothing goes into checkpoints but an empty dict.
    """

    provides_teacher_outputs = True
    requires_teacher = False

    def __init__(self, store: TeacherStore | Mapping[str, TeacherStore]) -> None:
        self.stores: dict[str, TeacherStore] = dict(store) if isinstance(store, Mapping) else {}
        if isinstance(store, Mapping) and not self.stores:
            raise ValueError("StoreStage: an empty mapping of stores")
        self.store = next(iter(self.stores.values())) if self.stores else store
        self.teacher_names: tuple[str, ...] = tuple(self.stores)
        self._serve: list[int] = []  # the stored captures the run reads, by their position in the store
        outline = None if self.stores else self.store.manifest.get("captures", {}).get("outline")
        self.teacher_outline: nn.Module | None = outline_module(outline) if outline else None

    def need_captures(self, specs: list[str]) -> None:
        """Serve these teacher captures from now on; a spec the store does not hold is a StoreError naming it.

        Stored captures serve a run's one teacher. Named stored teachers serve their outputs only (the run
        config refuses other terms on them), so the internals the terms read come from the live teachers."""
        if not specs or self.stores:
            return
        items = self.store.capture_items
        keys = [i.key for i in items]
        wanted = list(dict.fromkeys(parse_spec(s).key for s in specs))
        missing = [k for k in wanted if k not in keys]
        if missing:
            held = ", ".join(keys) if keys else "none (a store of outputs only)"
            raise StoreError(f"{self.store.directory}: the run reads the teacher's {', '.join(repr(m) for m in missing)}, "
                             f"which the store does not hold (it holds: {held}); build the store with these modules "
                             "(build_store(..., hidden=[...], attentions=[...]), or `ktransfer teacher-outputs build "
                             "--hidden ... --attentions ...`)")
        self._serve = [keys.index(k) for k in wanted]

    def __call__(self, batch: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if INDEX_KEY not in batch:
            raise StoreError("a batch without example indices: training from a store needs the training data "
                             "wrapped in ktransfer.store.IndexedDataset with ktransfer.store.IndexedCollate")
        batch = dict(batch)
        indices = [int(i) for i in batch.pop(INDEX_KEY).tolist()]
        if self.stores:
            batch[STORED_TEACHER_KEY] = {name: self._outputs(store, batch, indices, ctx)
                                         for name, store in self.stores.items()}
        else:
            batch[STORED_TEACHER_KEY] = self._outputs(self.store, batch, indices, ctx)
        if self._serve:
            batch[STORED_CAPTURES_KEY] = self._captures(batch, indices, ctx.device)
        return batch

    def _captures(self, batch: dict[str, Any], indices: list[int], device: Any) -> dict[str, Tensor]:
        items = self.store.capture_items
        mask = batch.get("attention_mask")
        out = {}
        for n in self._serve:
            rows = [self.store.capture(i, n) for i in indices]
            try:
                out[items[n].key] = place(rows, items[n], mask if isinstance(mask, Tensor) else None, indices,
                                          str(self.store.directory)).to(device)
            except CaptureStoreError as e:
                raise StoreError(str(e)) from e
        return out

    def _outputs(self, store: TeacherStore, batch: dict[str, Any], indices: list[int], ctx: Any) -> Any:
        if store.kind == "logits":
            return store.logits(indices).to(ctx.device)
        return self._sparse(store, batch, indices, ctx.task.kind).to(ctx.device)

    def _sparse(self, store: TeacherStore, batch: dict[str, Any], indices: list[int], task: str) -> SparseTeacher:
        own = store.teacher_tokens
        mask = target_mask(batch, task, "teacher_labels" if own else "labels").cpu()
        k = store.k  # the stored k, or fewer read from it
        # placeholder where there is no target (masked out by the losses): all mass on the first of k distinct ids
        ids = torch.arange(k, dtype=torch.int64).expand(*mask.shape, k).clone()
        logprobs = torch.full((*mask.shape, k), -math.inf)
        logprobs[..., 0] = 0.0
        tail = torch.full(mask.shape, -math.inf)
        following = torch.zeros(mask.shape)
        for row, index in enumerate(indices):
            s_ids, s_lp, s_tail = store.topk(index)
            where = mask[row].nonzero().squeeze(-1)
            if where.numel() != s_ids.shape[0]:
                whose = "teacher's " if own else ""
                raise StoreError(f"{store.directory}: example {index} has {s_ids.shape[0]} stored {whose}target "
                                 f"positions, but the batch gives it {where.numel()}: the run's data differs from "
                                 "the store's")
            ids[row, where], logprobs[row, where], tail[row, where] = s_ids, s_lp, s_tail
            if own:
                following[row, where] = store.next_logprobs(index)
        if own:
            return TeacherTokensSparse(ids, logprobs, tail, following, int(store.manifest["vocab_size"]),
                                       mass_tolerance=store.mass_tolerance())
        return SparseTeacher(ids, logprobs, tail, mass_tolerance=store.mass_tolerance())

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
