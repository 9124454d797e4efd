"""A Hugging Face `datasets` source beside our own: local files, a saved dataset, or a hub id from the cache.

`hf_dataset` reads rows with `load_dataset(path, name, data_files=..., split=...)` (or
`load_from_disk` for a folder written by `save_to_disk`), then hands the named fields to the
builder of the matching task, so that splitting, tokenising and the kept / truncated / dropped
counts are those of our own files:

- `text`: a causal-LM corpus (`ktransfer.data.corpus`), split by document into token blocks;
- `prompt` + `completion`: causal-LM examples with the loss on the completion (`ktransfer.data.prompts`);
- `text` + `label` (+ `text_pair`): text classification or sentence pairs (`ktransfer.data.text`);
- `source` + `target`: translation pairs (`ktransfer.data.translation`).

A hub id (`org/name`) is read from the local Hugging Face cache (`datasets--org--name/snapshots/`)
when it is there; with `HF_HUB_OFFLINE=1` an id the cache lacks is refused in one line. The rows
of the chosen `split`s (several are concatenated) are split into train / val / test by the
builder, so that no text is in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ktransfer.data.base import DataSplits
from ktransfer.data.files import cell_problem
from ktransfer.registry import DatasetSource, LocalPath, ModelSource
from ktransfer.data.corpus import tokenizer_folder
from ktransfer.sources import PACKAGED, HubSourceError, cached_snapshot, hub_offline, is_hub_id, require_cached

# The field combinations `hf_dataset` understands, by the task they feed.
MODES = {"corpus": ("text",), "prompt_completion": ("prompt", "completion"), "classification": ("text", "label"),
         "translation": ("source", "target")}


def _is_saved(folder: Path) -> bool:
    """Whether `folder` was written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def load_table(path: str, name: str | None = None, data_files: Any = None, revision: str | None = None) -> Any:
    """The `DatasetDict` (or `Dataset`) of a source: a saved folder, a hub id (cached snapshot first), or anything
    `load_dataset` takes (a builder such as `json` with `data_files`, a local folder or file)."""
    import datasets

    local = Path(path)
    if local.is_dir() and _is_saved(local):
        return datasets.load_from_disk(str(local))
    source = path
    if not local.exists() and is_hub_id(path) and path not in PACKAGED:
        snapshot = cached_snapshot(path, revision, "dataset")
        if snapshot is not None:
            source, revision = str(snapshot), None  # the cached files, read as a local folder: no network
        else:
            require_cached("hf_dataset", path, revision, "dataset")
    try:
        return datasets.load_dataset(source, name=name, data_files=data_files, revision=revision)
    except (ConnectionError, FileNotFoundError) as e:
        if hub_offline() and source == path and is_hub_id(path) and path not in PACKAGED:
            raise HubSourceError(f"hf_dataset: cannot read '{path}' offline: {str(e).splitlines()[0]}") from None
        raise


def _rows(table: Any, splits: Sequence[str], where: str) -> tuple[dict[str, list[Any]], list[str], Any]:
    """({field: values} of the chosen splits concatenated, the split of each row, the features)."""
    import datasets

    if isinstance(table, datasets.Dataset):
        table = datasets.DatasetDict({"train": table})
    missing = [s for s in splits if s not in table]
    if missing:
        raise ValueError(f"{where}: no split '{missing[0]}'; the dataset's splits are: {', '.join(table) or '(none)'}")
    columns: dict[str, list[Any]] = {}
    origin: list[str] = []
    features = table[splits[0]].features
    for split in splits:
        part = table[split]
        for key in part.column_names:
            columns.setdefault(key, []).extend(part[key])
        origin += [split] * len(part)
    return columns, origin, features


def _field(columns: dict[str, list[Any]], origin: list[str], key: str, role: str, where: str,
           features: Any, label: bool = False) -> list[str]:
    """The values of field `key` as text; a missing field or an empty cell is an error naming split, row and field."""
    if key not in columns:
        raise ValueError(f"{where}: {role} field '{key}' not found; the dataset's fields are: {', '.join(columns)}")
    names = getattr(features.get(key), "names", None) if label else None  # a ClassLabel: its names
    values, rows_seen = [], {}
    for value, split in zip(columns[key], origin):
        rows_seen[split] = rows_seen.get(split, 0) + 1
        problem = cell_problem(value) if label else ("no value" if value is None or not str(value).strip() else None)
        if problem:
            raise ValueError(f"{where}: split '{split}' row {rows_seen[split]}, field '{key}': {problem}; every "
                             f"example needs a {role}")
        values.append(names[value] if names is not None and isinstance(value, int) else str(value))
    return values


def _mode(fields: dict[str, str | None], where: str) -> str:
    given = tuple(k for k, v in fields.items() if v is not None)
    for mode, keys in MODES.items():
        if set(given) - {"text_pair"} == set(keys) and ("text_pair" not in given or mode == "classification"):
            return mode
    choices = "; ".join(f"{' + '.join(keys)} ({mode.replace('_', '/')})" for mode, keys in MODES.items())
    raise ValueError(f"{where}: name the fields of one task, got {', '.join(given) or 'none'}; valid combinations: "
                     f"{choices} (text_pair only with text + label)")


def hf_dataset(
    path: DatasetSource, name: str | None = None, data_files: LocalPath | list[str] | dict[str, Any] | None = None,
    revision: str | None = None, split: str | list[str] = "train", text: str | None = None, label: str | None = None,
    text_pair: str | None = None, prompt: str | None = None, completion: str | None = None, source: str | None = None,
    target: str | None = None, tokenizer: ModelSource | None = None, prepared_tokenizer: str | None = None,
    train_tokenizer: int | None = None, max_length: int | None = None, packing: Literal["pack", "pad"] = "pack",
    add_eos: bool = True, vocab_size: int = 8000, tokenizer_model: Literal["bpe", "unigram"] = "bpe",
    val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0, train_size: int | None = None,
    val_size: int | None = None, test_size: int | None = None, teacher_tokenizer: ModelSource | None = None,
) -> DataSplits:
    """A Hugging Face `datasets` source, as `load_dataset(path, name, data_files=..., split=...)` takes it (a hub id
    read from the local cache, `json`/`csv`/`parquet` with `data_files`, a local folder, or a `save_to_disk` folder),
    for the task its fields name: `text` (causal-LM corpus), `prompt` + `completion` (causal LM, loss on the
    completion), `text` + `label` [+ `text_pair`] (classification), `source` + `target` (translation).

    The rows of `split` (a list concatenates several) are split into train/val/test here (`val_fraction`,
    `test_fraction`, `split_seed`, then `*_size` subsamples). `tokenizer`: a local folder or a hub id;
    `max_length` defaults to each task's own default. `teacher_tokenizer` (`text` only): training blocks
    tokenised for a teacher with that tokenizer too (see `ktransfer.data.corpus`).
    """
    where = f"hf_dataset '{path}'"
    splits = [split] if isinstance(split, str) else list(split)
    mode = _mode({"text": text, "label": label, "text_pair": text_pair, "prompt": prompt, "completion": completion,
                  "source": source, "target": target}, where)
    if teacher_tokenizer is not None and mode != "corpus":
        raise ValueError(f"{where}: teacher_tokenizer tokenises a causal-LM corpus (field text alone) for a teacher "
                         f"with another tokenizer; these fields make a {mode.replace('_', '/')} dataset")
    columns, origin, features = _rows(load_table(path, name, data_files, revision), splits, where)
    tok = tokenizer_folder(tokenizer)
    sizes = {"train_size": train_size, "val_size": val_size, "test_size": test_size}
    common = {"val_fraction": val_fraction, "test_fraction": test_fraction, "split_seed": split_seed, **sizes}
    info = {"source": path, "hf_name": name, "hf_splits": splits, "hf_revision": revision}
    label_name = Path(path).stem if Path(path).exists() else path.replace("/", "_")
    if mode == "corpus":
        from ktransfer.data.corpus import corpus_splits

        docs = _field(columns, origin, str(text), "text", where, features)
        return corpus_splits(label_name, docs, tokenizer=tok, prepared_tokenizer=prepared_tokenizer,
                             train_tokenizer=train_tokenizer, max_length=max_length or 64, packing=packing,
                             add_eos=add_eos, extra_info=info, teacher_tokenizer=teacher_tokenizer, **common)
    if mode == "prompt_completion":
        from ktransfer.data.prompts import prompt_completion_splits

        return prompt_completion_splits(
            label_name, _field(columns, origin, str(prompt), "prompt", where, features),
            _field(columns, origin, str(completion), "completion", where, features), tokenizer=tok,
            prepared_tokenizer=prepared_tokenizer, train_tokenizer=train_tokenizer, max_length=max_length or 128,
            add_eos=add_eos, extra_info=info, **common)
    if mode == "classification":
        from ktransfer.data.text import text_splits

        texts = _field(columns, origin, str(text), "text", where, features)
        pairs = _field(columns, origin, text_pair, "text_pair", where, features) if text_pair else None
        labels = _field(columns, origin, str(label), "label", where, features, label=True)
        return text_splits(label_name, texts, labels, pairs=pairs, tokenizer=tok, max_length=max_length or 128,
                           extra_info=info, **common)
    from ktransfer.data.translation import _settings, parallel_splits

    settings = _settings(vocab_size, tokenizer_model, tok, max_length or 128, 200, None, 1, "auto")
    return parallel_splits(label_name, _field(columns, origin, str(source), "source", where, features),
                           _field(columns, origin, str(target), "target", where, features), None,
                           settings=settings, extra_info=info, **common)
