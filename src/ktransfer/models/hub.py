"""Pretrained Hugging Face models named as users name them: a hub id or a local folder.

`load_pretrained("org/name", revision=..., dtype=...)` reads the model the way `from_pretrained`
does. A hub id is read from the local Hugging Face cache when its files are there; with
`HF_HUB_OFFLINE=1` nothing is downloaded, and an id the cache lacks is refused in one line naming
the id, the cache folder and `HF_HUB_OFFLINE`. The loaded model records where it came from
(`SOURCE_ATTR`: the id or folder, revision and resolved commit) and, when its folder holds a
tokenizer, that folder (`TOKENIZER_ATTR`), which runs compare with the dataset's tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from torch import nn

from ktransfer.sources import HubSourceError, cached_commit, cached_snapshot, hub_cache_dir, is_hub_id, require_cached

AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForSequenceClassification", "AutoModel")
DTYPES = ("auto", "float32", "bfloat16", "float16")
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# Attribute naming where a loaded model came from: {"model", "revision", "commit", "subfolder"}.
SOURCE_ATTR = "ktransfer_source"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def auto_class(name: str) -> Any:
    """The transformers auto class `name`, or an error listing the valid ones."""
    import transformers

    if name not in AUTO_CLASSES:
        raise ValueError(f"unknown auto_class '{name}'; valid choices: {', '.join(AUTO_CLASSES)}")
    return getattr(transformers, name)


def torch_dtype(dtype: str) -> Any:
    """`auto` (the checkpoint's own type) or the torch dtype of a name."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype: invalid value '{dtype}'; valid choices: {', '.join(DTYPES)}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def is_local(source: str) -> bool:
    """Whether `source` names a local path (it exists, or it is not shaped like a hub id)."""
    return os.path.exists(source) or not is_hub_id(source)


def model_folder(source: str, revision: str | None = None, subfolder: str | None = None) -> Path | None:
    """The folder holding the model's files: the local folder, or the id's cached snapshot (None if not cached)."""
    root = Path(source) if is_local(source) else cached_snapshot(source, revision)
    if root is None:
        return None
    return root / subfolder if subfolder else root


def check_source(source: str, revision: str | None = None, who: str = "hf_pretrained") -> None:
    """Refuse a local folder that does not exist, or a hub id not cached while `HF_HUB_OFFLINE=1`."""
    if is_local(source):
        if not Path(source).exists():
            raise FileNotFoundError(f"{who}: model directory not found: {source}")
        return
    require_cached(who, source, revision, "model")


def load_pretrained(
    source: str, auto_class_name: str = "AutoModelForCausalLM", *, revision: str | None = None,
    dtype: str = "auto", subfolder: str | None = None, attn_implementation: str | None = "eager",
    kwargs: dict[str, Any] | None = None, who: str = "hf_pretrained",
) -> nn.Module:
    """The pretrained model `source` (hub id or local folder) as `auto_class_name`, with its origin recorded."""
    cls, resolved_dtype = auto_class(auto_class_name), torch_dtype(dtype)
    check_source(source, revision, who)
    local = is_local(source)
    options: dict[str, Any] = {"dtype": resolved_dtype, **({"subfolder": subfolder} if subfolder else {}),
                               **({"revision": revision} if revision and not local else {}),
                               **({"local_files_only": True} if local else {}),
                               **({"attn_implementation": attn_implementation} if attn_implementation else {})}
    try:
        model = cls.from_pretrained(source, **options, **(kwargs or {}))
    except OSError as e:
        if local:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubSourceError(f"{who}: cannot load '{source}'{f' at revision {revision!r}' if revision else ''} from the "
                             f"local Hugging Face cache (HF_HUB_CACHE={hub_cache_dir()}) or the hub: {first}") from None
    record_origin(model, source, revision, subfolder)
    return model


def record_origin(model: nn.Module, source: str, revision: str | None, subfolder: str | None) -> None:
    """Set `SOURCE_ATTR` (where the model came from) and, when its folder holds a tokenizer, `TOKENIZER_ATTR`."""
    from ktransfer.models.causal import TOKENIZER_ATTR

    commit = None if is_local(source) else cached_commit(source, revision)
    setattr(model, SOURCE_ATTR, {"model": source, "revision": revision, "commit": commit, "subfolder": subfolder})
    folder = model_folder(source, revision, subfolder)
    for candidate in ([folder, folder.parent] if subfolder and folder is not None else [folder]):
        if candidate is not None and any((candidate / name).is_file() for name in _TOKENIZER_FILES):
            setattr(model, TOKENIZER_ATTR, str(candidate))  # compared with the dataset's tokenizer before a run
            return
