"""A teacher output store: the teacher's outputs written once, read by the engine with no teacher in memory.

`format` defines the folder layout (documented there precisely enough for a user's script) with
`StoreWriter` and `TeacherStore`; `stage` attaches a batch's stored outputs during training; `match`
checks a store against a run before it trains; `ktransfer.store.build` runs a config's teacher to
write one (imported on demand: it needs the model builders).
"""

from ktransfer.store.format import FORMAT, StoreError, StoreWriter, TeacherStore, examples_digest, teacher_tokens_digest
from ktransfer.store.match import open_for_run
from ktransfer.store.stage import INDEX_KEY, IndexedCollate, IndexedDataset, StoreStage

__all__ = ["FORMAT", "INDEX_KEY", "IndexedCollate", "IndexedDataset", "StoreError", "StoreStage", "StoreWriter",
           "TeacherStore", "examples_digest", "open_for_run", "teacher_tokens_digest"]
