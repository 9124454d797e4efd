"""Encoder-decoder Transformers for translation, randomly initialised from a Hugging Face config (no download)."""

from __future__ import annotations

from typing import Any

from torch import nn


def build_encoder_decoder(
    family: str, *, vocab_size: int, pad_token_id: int, eos_token_id: int, decoder_start_token_id: int, d_model: int,
    encoder_layers: int, decoder_layers: int, attention_heads: int, ffn_dim: int, dropout: float,
    max_position_embeddings: int, attn_implementation: str = "sdpa",
) -> nn.Module:
    """A Marian (sinusoidal positions, pre-scaled embeddings) or BART (learned positions) model.

    Source and target share one embedding, tied to the output layer. Generation settings a
    pretrained checkpoint would carry (forced end tokens, a default length) are cleared: the
    caller says how to decode.
    """
    import transformers

    if d_model % attention_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by attention_heads ({attention_heads})")
    common: dict[str, Any] = dict(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_attention_heads=attention_heads, decoder_attention_heads=attention_heads, encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim, dropout=dropout, attention_dropout=0.0, activation_dropout=0.0,
        max_position_embeddings=max_position_embeddings, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        decoder_start_token_id=decoder_start_token_id, forced_eos_token_id=None, tie_word_embeddings=True,
    )
    if family == "marian":
        config = transformers.MarianConfig(decoder_vocab_size=vocab_size, share_encoder_decoder_embeddings=True,
                                           scale_embedding=True, **common)
    elif family == "bart":
        config = transformers.BartConfig(bos_token_id=decoder_start_token_id, forced_bos_token_id=None, **common)
    else:
        raise ValueError(f"family must be 'marian' or 'bart', got {family!r}")
    model = transformers.AutoModelForSeq2SeqLM.from_config(config, attn_implementation=attn_implementation)
    model.generation_config.forced_eos_token_id = None
    model.generation_config.forced_bos_token_id = None
    model.generation_config.num_beams = 1
    return model
