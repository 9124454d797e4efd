"""Before a run trains from a store: the store is intact and was made for this run's task, data, tokenizer and teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ktransfer.store.format import StoreError, TeacherStore, examples_digest, teacher_tokens_digest

_KIND_OF_TASK = {"classification": "logits", "causal_lm": "topk", "seq2seq": "topk"}


def open_for_run(directory: str | Path, *, task: str, train: Any, info: dict[str, Any],
                 teacher_sha256: str | None = None, where: str = "teacher.store", k: int | None = None) -> TeacherStore:
    """The verified store at `directory`, read at top-`k` when given (`TeacherStore.narrowed`), or a StoreError
    naming the first thing that differs from the run.

    Checked in order: the store is complete and every shard matches its checksum; its task; the
    tokenizer of the data (`info["tokenizer_sha256"]`); on whose tokens the teacher ran (a dataset with
    `teacher_tokenizer` needs a store built on the teacher's own tokens with that tokenizer, any other a
    store on the student's); every training example has an entry (same count); the teacher's
    tokenization of the examples; the content of the training examples; and, when `teacher_sha256` is
    given, the teacher.
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
    _check_teacher_tokens(store, info, where)
    if store.examples != len(train):
        missing = f"; examples {store.examples}..{len(train) - 1} have no entry" if store.examples < len(train) else ""
        raise StoreError(f"{where}: the store at {directory} holds {store.examples} training examples, this run's training "
                         f"split has {len(train)}{missing}: the data differs; build the store again from this data")
    if store.teacher_tokens and store.keys.get("teacher_tokenization") != teacher_tokens_digest(train):
        raise StoreError(f"{where}: the store at {directory} was built on another tokenization of the training texts "
                         "for the teacher (the digest of the teacher's token ids and character offsets differs: store "
                         f"{str(store.keys.get('teacher_tokenization'))[:12]}): the texts or the data settings changed "
                         "since the build; build the store again from this data")
    if store.keys.get("data") != examples_digest(train):
        raise StoreError(f"{where}: the store at {directory} was built from other training data (the examples' content "
                         f"digest differs: store {str(store.keys.get('data'))[:12]}); the data files, data settings or "
                         "preprocessing changed since the build; build the store again")
    if teacher_sha256 is not None and store.keys.get("teacher") != teacher_sha256:
        raise StoreError(f"{where}: the store at {directory} was built by another teacher (weights sha256 "
                         f"{str(store.keys.get('teacher'))[:12]}, the run expects {teacher_sha256[:12]})")
    return store.narrowed(k, where=where.rsplit(".", 1)[0] + ".k")


def _check_teacher_tokens(store: TeacherStore, info: dict[str, Any], where: str) -> None:
    """The teacher ran on the tokens this run's teacher reads: its own (`teacher_tokenizer`) or the student's."""
    directory = store.directory
    ours = info.get("teacher_tokenizer")
    if ours is not None and not store.teacher_tokens:
        raise StoreError(f"{where}: the store at {directory} holds the teacher's outputs on the student's tokens, but "
                         f"this run's teacher reads its own tokens (data.teacher_tokenizer: {ours}); build the store "
                         "from this config (`ktransfer teacher-outputs build CONFIG`), which runs the teacher on its "
                         "own tokens")
    if ours is None and store.teacher_tokens:
        recorded = str(store.keys.get("teacher_tokenizer"))[:12]
        raise StoreError(f"{where}: the store at {directory} holds the teacher's outputs on its own tokens (teacher "
                         f"tokenizer sha256 {recorded}), but this run's data has no teacher_tokenizer: set "
                         "data.teacher_tokenizer to the tokenizer the store was built with "
                         "and train with a cross_tokenizer term, or build a store on the student's tokens")
    if ours is None:
        return
    recorded, expected = store.keys.get("teacher_tokenizer"), info.get("teacher_tokenizer_sha256")
    if recorded != expected:
        raise StoreError(f"{where}: the store at {directory} was built on the tokens of another teacher tokenizer "
                         f"(vocabulary sha256 {str(recorded)[:12]}) than this run's data.teacher_tokenizer "
                         f"({str(expected)[:12]}, {ours}); build the store again from this data")
