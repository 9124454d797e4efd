"""Model builders, registered by name so a run config can describe teacher and student.

A Hugging Face model's tied weights (input embedding and output layer) appear once in its state
dict (`ktransfer.models.ties`), so that its checkpoints hold each tensor once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from torch import nn

from ktransfer.models.small import MLP, SmallCNN
from ktransfer.models.ties import tie_aware_state_dict
from ktransfer.registry import LocalPath, ModelSource, Registry

MODELS: Registry[nn.Module] = Registry("model builder")

# Builder arguments that a run fills from the dataset's `info` when the config leaves them out.
DATASET_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("in_features", "num_features"), ("num_classes", "num_classes"),
    # a sequence student reads the dataset's tokens: its vocabulary and special ids are the tokenizer's
    ("vocab_size", "vocab_size"), ("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
    ("pad_token_id", "pad_token_id"), ("decoder_start_token_id", "decoder_start_token_id"),
)


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


def _auto_class(name: str) -> Any:
    from ktransfer.models.hub import auto_class

    return auto_class(name)


@MODELS.register("hf_config")
def build_hf_config(
    model_type: str, auto_class: str = "AutoModelForCausalLM", config: dict[str, Any] | None = None,
    attn_implementation: str = "eager",
) -> nn.Module:
    """A randomly initialised Hugging Face model from a config (no download), e.g. a tiny GPT-2."""
    import transformers

    cfg = transformers.AutoConfig.for_model(model_type, **(config or {}))
    return tie_aware_state_dict(_auto_class(auto_class).from_config(cfg, attn_implementation=attn_implementation))


@MODELS.register("seq2seq_transformer")
def build_seq2seq_transformer(
    vocab_size: int, pad_token_id: int, eos_token_id: int, decoder_start_token_id: int,
    family: Literal["marian", "bart"] = "marian", d_model: int = 256, encoder_layers: int = 3, decoder_layers: int = 3,
    attention_heads: int = 4, ffn_dim: int = 1024, dropout: float = 0.1, max_position_embeddings: int = 256,
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """A randomly initialised encoder-decoder Transformer (Hugging Face Marian or BART) with one shared,
    tied embedding; vocabulary and special ids default to the dataset's tokenizer."""
    from ktransfer.models.seq2seq import build_encoder_decoder

    return tie_aware_state_dict(build_encoder_decoder(
        family, vocab_size=vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        decoder_start_token_id=decoder_start_token_id, d_model=d_model, encoder_layers=encoder_layers,
        decoder_layers=decoder_layers, attention_heads=attention_heads, ffn_dim=ffn_dim, dropout=dropout,
        max_position_embeddings=max_position_embeddings, attn_implementation=attn_implementation))


@MODELS.register("hf_pretrained")
def build_hf_pretrained(
    model: ModelSource | None = None, auto_class: str = "AutoModelForCausalLM", revision: str | None = None,
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto", subfolder: str | None = None,
    attn_implementation: str = "eager", kwargs: dict[str, Any] | None = None, path: LocalPath | None = None,
) -> nn.Module:
    """A pretrained Hugging Face model, named as `from_pretrained` takes it: a hub id (`org/name`, read from the
    local Hugging Face cache; downloaded unless HF_HUB_OFFLINE=1) or a local folder, at `revision`, in `dtype`
    (auto: the checkpoint's own). A tokenizer saved with it must be the dataset's for sequence tasks (checked
    before training). `path` (a local folder) is the former name of `model`."""
    from ktransfer.models.hub import load_pretrained

    if path is not None:
        if model is not None:
            raise ValueError("give model (a hub id or local folder), not also its former name path")
        warnings.warn("hf_pretrained: path is deprecated; name the model with model: (a local folder or a hub id "
                      "such as HuggingFaceTB/SmolLM2-135M-Instruct)", FutureWarning, stacklevel=2)
        model = path
    if model is None:
        raise ValueError("hf_pretrained: give model: a hub id (org/name) or a local model folder")
    return tie_aware_state_dict(load_pretrained(model, auto_class, revision=revision, dtype=dtype, subfolder=subfolder,
                                                attn_implementation=attn_implementation, kwargs=kwargs))


@MODELS.register("minilm")
def build_minilm(num_classes: int, path: ModelSource | None = None) -> nn.Module:
    """The pretrained MiniLM encoder (6 layers, width 384) with a new classification head.

    `path`: a local model folder or a hub id (from the local Hugging Face cache); default the one
    `ktransfer data prepare minilm` unpacks.
    """
    from ktransfer.models.minilm import load_encoder

    return load_encoder(num_classes, path)


@MODELS.register("minilm_student")
def build_minilm_student(
    num_classes: int, num_layers: int = 3, init: Literal["teacher_layers", "random"] = "teacher_layers",
    layers: Sequence[int] | None = None, path: ModelSource | None = None,
) -> nn.Module:
    """A MiniLM of `num_layers` layers, same width; `init: teacher_layers` copies embeddings and
    `layers` (default evenly spaced, e.g. [1, 3, 5]) from the pretrained encoder, `random` does not."""
    from ktransfer.models.minilm import build_student

    return build_student(num_classes, num_layers, init, layers, path)


# A cached teacher's entry is named by a hash of its run config, a layer above the model builders:
# that layer (ktransfer.building) provides the loader when it is imported, so that nothing here
# imports it.
_CACHED_TEACHER_LOADER: list[Callable[[str, int, str], nn.Module]] = []


# A run directory's student is rebuilt from the run's config, also a layer above: that layer provides the loader.
_RUN_LOADER: list[Callable[[str, str, dict[str, Any]], nn.Module]] = []


def provide_run_loader(loader: Callable[[str, str, dict[str, Any]], nn.Module]) -> None:
    """Set what `hf_cut` calls for a run directory: `loader(run_dir, which, info)` -> the run's student, weights loaded."""
    _RUN_LOADER[:] = [loader]


def is_run_dir(source: str) -> bool:
    """Whether `source` is a ktransfer run directory (it holds the run's config.yaml)."""
    return (Path(source) / "config.yaml").is_file()


def provide_cached_teacher_loader(loader: Callable[[str, int, str], nn.Module]) -> None:
    """Set what `cached_teacher` calls: `loader(config, num_classes, which)` -> the cached run's student."""
    _CACHED_TEACHER_LOADER[:] = [loader]
@MODELS.register("hf_cut")
def build_hf_cut(
    teacher: ModelSource, auto_class: str = "AutoModelForCausalLM", revision: str | None = None,
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32", subfolder: str | None = None,
    layers: Sequence[int] | None = None, every: int | None = None, first: int | None = None, last: int | None = None,
    encoder_layers: Sequence[int] | None = None, decoder_layers: Sequence[int] | None = None,
    intermediate_size: int | None = None, num_heads: int | None = None, keep: Literal["norm", "first"] = "norm",
    num_classes: int | None = None, attn_implementation: str = "eager",
) -> nn.Module:
    """A student cut from a pretrained Hugging Face teacher (hub id or local folder; decoder-only, encoder or
    encoder-decoder) or from the student of a ktransfer run (a run directory: its final weights and trained
    head; `auto_class` and `num_classes` then come from that run): its `layers` (or `every` k-th from the top, or the `first`/`last` n; an encoder-decoder's
    stacks apart with `encoder_layers`/`decoder_layers`), optionally `intermediate_size` MLP units and `num_heads`
    heads per layer (`keep`: largest weight norm or first), all weights copied from the teacher. What was kept is
    on the student's config (`ktransfer_cut`). `num_classes` gives a sequence classifier a new head."""
    from ktransfer.models.cut import cut_from_model, cut_from_source

    cut = dict(layers=layers, every=every, first=first, last=last, encoder_layers=encoder_layers,
               decoder_layers=decoder_layers, intermediate_size=intermediate_size, num_heads=num_heads, keep=keep)
    if is_run_dir(teacher):  # a ktransfer run: its student with its final weights, the head it was trained with
        if not _RUN_LOADER:
            raise RuntimeError("hf_cut: a run directory is read by ktransfer.building, which provides the loader; "
                               "build run models with ktransfer.building.build_model (ktransfer.runner and the CLI do)")
        source = _RUN_LOADER[0](teacher, "final", {"num_classes": num_classes} if num_classes else {})
        student, _ = cut_from_model(source, teacher, **cut)  # type: ignore[arg-type]
        return tie_aware_state_dict(student)
    student, _ = cut_from_source(
        teacher, auto_class, revision=revision, dtype=dtype, subfolder=subfolder,
        attn_implementation=attn_implementation, num_classes=num_classes, layers=layers, every=every, first=first,
        last=last, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        intermediate_size=intermediate_size, num_heads=num_heads, keep=keep)
    return tie_aware_state_dict(student)


@MODELS.register("cached_teacher")
def build_cached_teacher(
    config: LocalPath, num_classes: int, which: Literal["best", "final"] = "best",
) -> nn.Module:
    """A teacher trained once by `ktransfer data prepare teacher --config CONFIG` and kept in the cache
    (keyed by that config); refuses with that command when it is not trained yet."""
    if not _CACHED_TEACHER_LOADER:
        raise RuntimeError("cached_teacher: teachers are found by their run config, which ktransfer.building reads; "
                           "build run models with ktransfer.building.build_model (ktransfer.runner and the CLI do)")
    return _CACHED_TEACHER_LOADER[0](config, num_classes, which)


@MODELS.register("smollm2")
def build_smollm2(attn_implementation: str = "sdpa") -> nn.Module:
    """The pretrained SmolLM2-135M-Instruct causal LM (Llama, 30 layers, 49,152 tokens) in float32, from
    the cache that `ktransfer data prepare smollm2` fills; refuses with that command when absent."""
    from ktransfer.models.causal import load_smollm2

    return tie_aware_state_dict(load_smollm2(attn_implementation))


@MODELS.register("llama_student")
def build_llama_student(
    vocab_size: int, hidden_size: int = 256, num_layers: int = 4, num_heads: int = 4, num_kv_heads: int | None = None,
    intermediate_size: int | None = None, max_position_embeddings: int = 2048, tie_word_embeddings: bool = True,
    bos_token_id: int | None = None, eos_token_id: int | None = None, pad_token_id: int | None = None,
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """A randomly initialised Llama causal LM; vocabulary and special token ids default to the dataset's
    tokenizer (a larger vocab_size pads the embedding rows); intermediate_size defaults to 4 x hidden."""
    from ktransfer.models.causal import build_llama_student as build

    return tie_aware_state_dict(build(vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size,
                                      max_position_embeddings, tie_word_embeddings, bos_token_id, eos_token_id,
                                      pad_token_id, attn_implementation=attn_implementation))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not), shared tensors counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = ["DATASET_DEFAULTS", "MODELS", "MLP", "SmallCNN", "count_parameters"]
