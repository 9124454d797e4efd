"""Model builders, registered by name so a run config can describe teacher and student."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ktransfer.models.small import MLP, SmallCNN
from ktransfer.registry import LocalPath, Registry

MODELS: Registry[nn.Module] = Registry("model builder")

# Builder arguments that a run fills from the dataset's `info` when the config leaves them out.
DATASET_DEFAULTS: tuple[tuple[str, str], ...] = (("in_features", "num_features"), ("num_classes", "num_classes"))


@MODELS.register("mlp")
def build_mlp(
    in_features: int, num_classes: int, hidden: Sequence[int] = (64,), dropout: float = 0.0
) -> nn.Module:
    """A multi-layer perceptron; `in_features`/`num_classes` default to the dataset's."""
    return MLP(in_features, num_classes, hidden=tuple(hidden), dropout=dropout)


@MODELS.register("cnn")
def build_cnn(
    in_features: int, num_classes: int, channels: Sequence[int] = (32, 64), dropout: float = 0.0
) -> nn.Module:
    """A small CNN for square grey images given as flat vectors (e.g. 8x8 digits)."""
    return SmallCNN(in_features, num_classes, channels=tuple(channels), dropout=dropout)


_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForSequenceClassification", "AutoModel")


def _auto_class(name: str) -> Any:
    import transformers

    if name not in _AUTO_CLASSES:
        raise ValueError(f"unknown auto_class '{name}'; valid choices: {', '.join(_AUTO_CLASSES)}")
    return getattr(transformers, name)


@MODELS.register("hf_config")
def build_hf_config(
    model_type: str, auto_class: str = "AutoModelForCausalLM", config: dict[str, Any] | None = None,
    attn_implementation: str = "eager",
) -> nn.Module:
    """A randomly initialised Hugging Face model from a config (no download), e.g. a tiny GPT-2."""
    import transformers

    cfg = transformers.AutoConfig.for_model(model_type, **(config or {}))
    return _auto_class(auto_class).from_config(cfg, attn_implementation=attn_implementation)


@MODELS.register("hf_pretrained")
def build_hf_pretrained(
    path: LocalPath, auto_class: str = "AutoModelForCausalLM", attn_implementation: str = "eager",
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A Hugging Face model from a local directory (never the hub: we run offline)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"hf_pretrained: model directory not found: {path}")
    return _auto_class(auto_class).from_pretrained(
        path, local_files_only=True, attn_implementation=attn_implementation, **(kwargs or {})
    )


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not), shared tensors counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = ["DATASET_DEFAULTS", "MODELS", "MLP", "SmallCNN", "count_parameters"]
