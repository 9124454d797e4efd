"""A sequence model's forward pass without its (tokens x V) logits, for losses that fuse the output layer.

A Hugging Face causal LM computes ``logits = lm_head(hidden[:, keep])`` where
``keep`` comes from its ``logits_to_keep`` argument. Called with ``logits_to_keep=1``, the model
projects only its last position; the hidden states it would have projected are the output of
the model's body (``model.base_model``, e.g. ``model`` of a Llama, ``transformer`` of a GPT-2),
captured with a forward hook (:class:`ktransfer.capture.Capture`). A divergence given
``student_head=(weight, bias)`` then computes the logits chunk by chunk inside the loss
(`ktransfer.divergences`), so they never exist for all tokens at once. Nothing in the model's
code is edited.

The first call can check (``check=True``) that the model's own logits at the last position equal
``hidden @ weight.T + bias`` there, so a model that transforms its logits in another way
(soft-capping, scaling) is refused with an error rather than distilled with the wrong logits.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from ktransfer.capture import Capture, first_tensor

__all__ = ["FusedHeadError", "body_name", "fused_forward", "output_layer", "unwrap"]


class FusedHeadError(ValueError):
    """The model cannot be run with its output layer fused into the loss."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / Accelerate (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    inner = model
    while True:
        nested = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None)
        if not isinstance(nested, nn.Module):
            return inner
        inner = nested


def _supports(model: nn.Module) -> None:
    what = type(model).__name__
    try:
        parameters = inspect.signature(model.forward).parameters
        # **kwargs may pass it on; a model that ignores it is caught by the check of the first call
        takes = "logits_to_keep" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    except (TypeError, ValueError):
        takes = False
    if not takes or getattr(model, "base_model", model) is model:
        raise FusedHeadError(
            f"fused_head needs a Hugging Face model whose forward takes logits_to_keep and that has a body "
            f"(base_model) under its output layer (causal LMs such as LlamaForCausalLM, GPT2LMHeadModel; not "
            f"MarianMTModel or BartForConditionalGeneration, whose forward has no logits_to_keep); "
            f"{what} has not. Use fused_head: false for this student."
        )


def output_layer(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight (V, H), bias (V,) or None) of the model's output layer, Marian/BART's `final_logits_bias` included."""
    inner = unwrap(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise FusedHeadError(f"fused_head: cannot find the output layer (a (V, H) weight) of {type(inner).__name__}")
    bias = getattr(head, "bias", None)
    final = getattr(inner, "final_logits_bias", None)  # Marian / BART add it after the output layer
    if isinstance(final, Tensor):
        final = final.reshape(-1)
        bias = final if bias is None else bias + final
    return weight, bias


def body_name(model: nn.Module) -> str:
    """Name (in ``model.named_modules()``, wrappers unwrapped) of the body whose output the head projects."""
    inner = unwrap(model)
    _supports(inner)
    body = inner.base_model
    for name, module in inner.named_modules():
        if module is body:
            return name
    raise FusedHeadError(f"fused_head: the base_model of {type(inner).__name__} is not one of its submodules")


def fused_forward(model: nn.Module, kwargs: dict[str, Any], *, check: bool = False
                  ) -> tuple[Any, Tensor, tuple[Tensor, Tensor | None]]:
    """Call ``model(**kwargs, logits_to_keep=1)``: (raw output, hidden states (..., T, H), (weight, bias)).

    With ``check``, the model's last-position logits must equal the fused head's there
    (tolerance of the hidden states' precision), else :class:`FusedHeadError`.
    """
    name = body_name(model)
    with Capture(model, [f"{name}:output"]) as capture:
        raw = model(**kwargs, logits_to_keep=1)
    hidden = first_tensor(capture[f"{name}:output"])
    weight, bias = output_layer(model)
    if hidden.dtype != weight.dtype:  # mixed precision: the loss computes in the weight's dtype or float32
        hidden = hidden.to(weight.dtype)
    what = type(unwrap(model)).__name__
    logits = getattr(raw, "logits", None)
    if not isinstance(logits, Tensor):
        raise FusedHeadError(f"fused_head: {what} returned no .logits to check the fused output layer against")
    if logits.dim() < 2 or logits.shape[-2] != 1:
        raise FusedHeadError(
            f"fused_head: {what} ignored logits_to_keep=1 (it returned logits of shape {tuple(logits.shape)}), so "
            "its logits would still be computed for every position. Use fused_head: false for this student."
        )
    if check:
        _check_last_position(logits, hidden, weight, bias, what)
    return raw, hidden, (weight, bias)


def _check_last_position(logits: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None, what: str) -> None:
    with torch.no_grad():
        mine = nn.functional.linear(hidden[..., -1:, :], weight, bias).float()
        theirs = logits.float()
        tolerance = (1e-4 if hidden.dtype in (torch.float32, torch.float64) else 3e-2) * (1.0 + theirs.abs().max())
        gap = (mine - theirs).abs().max()
        if not bool(gap <= tolerance):
            raise FusedHeadError(
                f"fused_head: {what}'s logits are not its output layer applied to its body's output (they differ by "
                f"up to {float(gap):.3g} at the last position): the model transforms its logits in a way the fused "
                "loss cannot reproduce (e.g. soft-capping or scaling). Use fused_head: false for this student."
            )
