"""Causal language models: the pretrained SmolLM2-135M teacher and small Llama students.

The pretrained SmolLM2-135M-Instruct is prepared and dequantised once into the cache by
`ktransfer.pretrained` (`ktransfer data prepare smollm2`); `load_smollm2` reads that float32 copy.
Nothing is fetched from a model hub.

A student is a randomly initialised `LlamaForCausalLM` sized from the config, reading the
dataset's tokens: its vocabulary and special token ids default to the dataset's tokenizer, so a
student of data tokenised by the teacher's tokenizer shares the teacher's vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from ktransfer.pretrained import (
    SMOLLM2,
    SMOLLM2_GGUF,
    _dequantised_key,
    dequantise,
    prepare_smollm2,
    prepare_smollm2_gguf,
    smollm2_dir,
    smollm2_tokenizer,
)

__all__ = ["SMOLLM2", "SMOLLM2_GGUF", "TOKENIZER_ATTR", "build_llama_student", "dequantise", "load_smollm2",
           "prepare_smollm2", "prepare_smollm2_gguf", "smollm2_dir", "smollm2_tokenizer", "_dequantised_key"]

# Attribute a builder sets on a model it knows the tokenizer of (a folder `AutoTokenizer` reads):
# runs compare it with the dataset's tokenizer before training (`sequence.vocab.check_data_tokenizer`).
TOKENIZER_ATTR = "ktransfer_tokenizer"


def load_smollm2(attn_implementation: str = "sdpa") -> nn.Module:
    """The pretrained SmolLM2-135M-Instruct in float32, with its tokenizer folder recorded on the model."""
    from transformers import AutoModelForCausalLM

    folder = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True,
                                                 attn_implementation=attn_implementation)
    setattr(model, TOKENIZER_ATTR, str(folder))
    return model


def build_llama_student(
    vocab_size: int, hidden_size: int = 256, num_layers: int = 4, num_heads: int = 4,
    num_kv_heads: int | None = None, intermediate_size: int | None = None, max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True, bos_token_id: int | None = None, eos_token_id: int | None = None,
    pad_token_id: int | None = None, rope_theta: float = 100000.0, attn_implementation: str = "sdpa",
) -> nn.Module:
    """A randomly initialised Llama (the run's seed decides its weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
    kv = num_kv_heads if num_kv_heads is not None else num_heads
    if num_heads % kv:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({kv})")
    for key, value in (("vocab_size", vocab_size), ("num_layers", num_layers), ("hidden_size", hidden_size)):
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=kv, intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, rope_theta=rope_theta)
    return LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation)
