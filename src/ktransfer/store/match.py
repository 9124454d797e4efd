"""Before a run trains from a store: the store is intact and was made for this run's task, data, tokenizer and teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ktransfer.store.format import StoreError, TeacherStore, examples_digest

_KIND_OF_TASK = {"classification": "logits", "causal_lm": "topk", "seq2seq": "topk"}


def open_for_run(directory: str | Path, *, task: str, train: Any, info: dict[str, Any],
                 teacher_sha256: str | None = None, where: str = "teacher.store") -> TeacherStore:
    """The verified store at `directory`, or a StoreError naming the first thing that differs from the run.

    Checked in order: the store is complete and every shard matches its checksum; its task; the
    tokenizer of the data (`info["tokenizer_sha256"]`); every training example has an entry (same
    count); the content of the training examples; and, when `teacher_sha256` is given, the teacher.
    """
    try:
        store = TeacherStore.open(directory)
    except StoreError as e:
        raise StoreError(f"{where}: {e}") from e
    m = store.manifest
    if m["task"] != task or m["kind"] != _KIND_OF_TASK.get(task):
        raise StoreError(f"{where}: the store at {directory} holds outputs for task '{m['task']}' ({m['kind']}), "
                         f"this run's task is '{task}'")
    recorded, ours = store.keys.get("tokenizer"), info.get("tokenizer_sha256")
    if recorded != ours:
        raise StoreError(f"{where}: the store at {directory} was built on the tokens of another tokenizer (vocabulary "
                         f"sha256 {str(recorded)[:12]}) than this run's data ({str(ours)[:12]}, {info.get('tokenizer')}); "
                         "build the store again from this data")
    if store.examples != len(train):
        missing = f"; examples {store.examples}..{len(train) - 1} have no entry" if store.examples < len(train) else ""
        raise StoreError(f"{where}: the store at {directory} holds {store.examples} training examples, this run's training "
                         f"split has {len(train)}{missing}: the data differs; build the store again from this data")
    if store.keys.get("data") != examples_digest(train):
        raise StoreError(f"{where}: the store at {directory} was built from other training data (the examples' content "
                         f"digest differs: store {str(store.keys.get('data'))[:12]}); the data files, data settings or "
                         "preprocessing changed since the build; build the store again")
    if teacher_sha256 is not None and store.keys.get("teacher") != teacher_sha256:
        raise StoreError(f"{where}: the store at {directory} was built by another teacher (weights sha256 "
                         f"{str(store.keys.get('teacher'))[:12]}, the run expects {teacher_sha256[:12]})")
    return store
