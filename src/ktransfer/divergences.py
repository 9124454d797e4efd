"""Divergences between categorical distributions given as logits, for distillation.

Every function takes logits of shape ``(..., V)``, turns them into distributions with
``softmax(logits / T)`` and compares them token by token (one row of ``V`` logits is one
token).  Notation used in the docstrings: ``P`` is the teacher distribution, ``Q`` the
student distribution, both at temperature ``T``.

Keyword arguments shared by the distillation losses (all take ``(student_logits,
teacher_logits)`` in this order):

* ``mask``: bool tensor of shape ``logits.shape[:-1]``, True = the token counts.
* ``labels`` / ``ignore_index``: alternative mask ``labels != ignore_index``; combined with
  ``mask`` by AND when both are given.
* ``temperature``: T > 0, both logit tensors are divided by it before the softmax.
* ``reduction``: "none" (per-token values, 0 at masked tokens), "sum" (over counted
  tokens), "mean" (sum / number of counted tokens, 0 if there are none) or "batchmean"
  (sum / ``logits.shape[0]``, like ``torch.nn.KLDivLoss``; 1-D logits count as one token).
* ``chunk_size``: number of flattened rows processed at a time (None = all at once).
* ``vocab_size``: real vocabulary size when one embedding matrix is padded, see
  :func:`align_vocab`.
* ``student_head``: ``(weight, bias)`` of the student's output layer. Then the first argument
  is the student's *hidden states* (..., H), not its logits, and the logits are computed
  chunk by chunk (with ``chunk_size``), so the student's (tokens x V) logits never exist at
  once, not even in the input dtype. Gradients flow to the hidden states, weight and bias.

All divergences share one implementation of the mechanics (validation, masking, upcasting,
chunking, reductions) in :func:`_divergence`; each divergence only supplies a per-row formula
on log-probabilities.  Notes that hold for all of them:

* Computation happens in ``torch.promote_types(dtype, float32)``, so bf16/fp16 logits are
  upcast (per chunk) and float64 stays float64.  The result has that dtype.
* ``0 * log 0 = 0``: vocabulary entries where the distribution outside the log (the
  "outer" one) has probability exactly 0 contribute exactly 0, with no NaN in value or
  gradient, also for ``-inf`` logits.
* Where the outer distribution has mass but the other one has probability exactly 0, KL is
  genuinely ``+inf`` and ``+inf`` is returned (its gradient is not meaningful).  The trainer
  guards against non-finite losses.
* Masked tokens are dropped (rows are selected, not multiplied by the mask), so their logits
  may contain garbage, even NaN, without affecting the value or the gradient.
* With ``chunk_size`` set, rows are processed ``chunk_size`` at a time, so float32
  intermediates exist for one chunk only. When gradients are needed, scalar reductions take
  each chunk's gradient during the forward pass into one buffer per input (which is all that is
  kept for backward; the returned loss supports one backward, not double backward). Backward
  scales that buffer in place and hands it over as the gradient (no copy), unless the graph is
  retained. Given logits (no ``student_head``), these chunks hold at most 2 MiB of rows per
  intermediate (16 rows at V = 32,000 in float32; ``chunk_size`` is the upper bound), so the
  peak memory stays close to inputs + gradient. The per-token reduction "none" recomputes each
  chunk in the backward pass (checkpointing).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypedDict, get_args

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint
from typing_extensions import Unpack

__all__ = [
    "DIVERGENCES",
    "Reduction",
    "align_vocab",
    "backward_kl",
    "forward_kl",
    "get_divergence",
    "jsd",
    "kl",
    "skew_backward_kl",
    "skew_forward_kl",
    "soft_target_loss",
    "tvd",
]

Reduction = Literal["none", "sum", "mean", "batchmean"]
_REDUCTIONS: tuple[str, ...] = get_args(Reduction)

class DistillOptions(TypedDict, total=False):
    """Keyword options shared by every distillation loss (see the module docstring)."""

    mask: Tensor | None
    labels: Tensor | None
    ignore_index: int
    chunk_size: int | None
    vocab_size: int | None
    student_head: tuple[Tensor, Tensor | None] | None


# A per-row formula: (log-probs of the first argument, log-probs of the second) -> (rows,).
RowFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------
# Per-row formulas on log-probabilities of shape (rows, V)
# --------------------------------------------------------------------------------------


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row, with 0 * log 0 = 0 and no NaN gradients (+inf if p > 0 = q).

    The log-ratio is sanitised *before* multiplying by ``p``: ``where(p > 0, p * r, 0)``
    would still back-propagate ``0 * nan`` from the untaken branch.
    """
    p = log_p.exp()
    ratio = torch.where(p > 0, log_p - log_q, torch.zeros_like(log_p))
    return (p * ratio).sum(dim=-1)


def _forward_kl_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(P || Q) from (student log-probs, teacher log-probs)."""
    return _kl_rows(log_p, log_q)


def _backward_kl_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(Q || P) from (student log-probs, teacher log-probs)."""
    return _kl_rows(log_q, log_p)


def _log_mix(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w * A + (1 - w) * B) for 0 < w < 1, mixed in probability space via logaddexp.

    Entries where both A and B are exactly 0 would give a NaN gradient in logaddexp, so
    they are computed on dummy finite inputs and set to -inf afterwards.
    """
    x = log_a + math.log(weight_a)
    y = log_b + math.log1p(-weight_a)
    both_zero = torch.isneginf(x) & torch.isneginf(y)
    mixed = torch.logaddexp(x.masked_fill(both_zero, 0.0), y.masked_fill(both_zero, 0.0))
    return mixed.masked_fill(both_zero, -math.inf)


def _tvd_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Total variation distance 0.5 * sum_v |p_v - q_v| per row."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)


# --------------------------------------------------------------------------------------
# Shared mechanics: validation, masking, chunking, reduction
# --------------------------------------------------------------------------------------


def _check_pair(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    """Check that two logit tensors can be compared row by row (vocab dim aside)."""
    name_a, name_b = names
    for name, t in ((name_a, a), (name_b, b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} logits must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 1:
            raise ValueError(f"{name} logits must have at least one dimension (the vocabulary)")
        if not t.is_floating_point():
            raise TypeError(f"{name} logits must be floating point, got {t.dtype}")
    if a.device != b.device:
        raise ValueError(f"{name_a} logits are on {a.device} but {name_b} logits on {b.device}")
    if a.shape[:-1] != b.shape[:-1]:
        raise ValueError(
            f"{name_a} logits have shape {tuple(a.shape)} but {name_b} logits {tuple(b.shape)}: "
            "all dimensions except the last (vocabulary) must match"
        )


def align_vocab(
    student_logits: Tensor, teacher_logits: Tensor, vocab_size: int | None
) -> tuple[Tensor, Tensor]:
    """Return student/teacher logits over the same vocabulary.

    Models that share a tokenizer often pad their embedding matrices to different sizes.
    With ``vocab_size`` given, both are sliced to ``[..., :vocab_size]`` (views, no copy);
    without it, differing vocabularies are an error since guessing could silently compare
    unrelated tokens.
    """
    _check_pair(student_logits, teacher_logits, ("student", "teacher"))
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    if vocab_size is None:
        if v_s != v_t:
            raise ValueError(
                f"student has vocabulary {v_s}, teacher {v_t}: if they share a tokenizer and "
                "one embedding matrix is padded, pass vocab_size=<real vocabulary size> to "
                "drop the padded rows"
            )
        return student_logits, teacher_logits
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if vocab_size > min(v_s, v_t):
        raise ValueError(
            f"vocab_size={vocab_size} is larger than the student vocabulary ({v_s}) or the "
            f"teacher vocabulary ({v_t})"
        )
    return student_logits[..., :vocab_size], teacher_logits[..., :vocab_size]


def _build_mask(
    lead_shape: torch.Size,
    device: torch.device,
    mask: Tensor | None,
    labels: Tensor | None,
    ignore_index: int,
) -> Tensor | None:
    """Combine ``mask`` and ``labels != ignore_index`` into one bool mask (or None)."""
    combined: Tensor | None = None
    if mask is not None:
        if mask.shape != lead_shape:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)} but the logits need {tuple(lead_shape)} "
                "(the logits shape without the vocabulary dimension)"
            )
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"mask must be bool (True = token counts), got {mask.dtype}")
        combined = mask.to(device=device, dtype=torch.bool)
    if labels is not None:
        if labels.shape != lead_shape:
            raise ValueError(
                f"labels have shape {tuple(labels.shape)} but the logits need "
                f"{tuple(lead_shape)} (the logits shape without the vocabulary dimension)"
            )
        from_labels = labels.to(device) != ignore_index
        combined = from_labels if combined is None else combined & from_labels
    return combined


def _chunk_values(
    first: Tensor,
    second: Tensor,
    rows: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    row_fn: RowFn,
    temperature: float,
    dtype: torch.dtype,
) -> Tensor:
    """Per-row divergence for one chunk: select rows, (apply the head), upcast, scale, formula."""
    if rows is not None:
        first = first.index_select(0, rows)
        second = second.index_select(0, rows)
    if weight is not None:
        first = torch.nn.functional.linear(first, weight, bias)  # hidden states -> logits, this chunk only
    first = first.to(dtype)
    second = second.to(dtype)
    if temperature != 1.0:
        first = first / temperature
        second = second / temperature
    return row_fn(torch.log_softmax(first, dim=-1), torch.log_softmax(second, dim=-1))


def _chunks(num_rows: int, step: int, flat_mask: Tensor | None) -> Iterator[tuple[int, int, Tensor | None]]:
    """(start, stop, rows) of each chunk that has counted rows; rows index into the chunk (None = all)."""
    for start in range(0, num_rows, step):
        stop = min(start + step, num_rows)
        rows = None
        if flat_mask is not None:
            rows = flat_mask[start:stop].nonzero().squeeze(-1)
            if rows.numel() == 0:
                continue
            if rows.numel() == stop - start:  # every row counts: no need to copy the selected rows
                rows = None
        yield start, stop, rows


# Bytes of one (rows x V) intermediate when gradients are taken chunk by chunk in the forward pass
# (without an output layer): 2 MiB is 16 rows of a 32,000-token vocabulary in float32. A dozen such
# intermediates then stay far below the size of the gradient itself, and small chunks are faster
# on a CPU than large ones (they stay in cache); `chunk_size` remains the upper bound.
_WORKING_SET_BYTES = 2 * 2**20


def _keep_graph() -> bool:
    """Whether the running backward pass keeps the graph (retain_graph=True); True if unknown."""
    keep = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep is None else bool(keep())


class _GradInForward(torch.autograd.Function):
    """A chunked scalar loss whose gradients are taken chunk by chunk in the forward pass.

    Autograd through row slices would, in the backward pass, build a zero gradient of the full
    (tokens x V) size for every chunk; here only one gradient buffer the size of each input and
    one chunk's intermediates exist at a time. Used for scalar reductions when gradients are
    needed and `chunk_size` is set; the per-token reduction ("none") uses checkpointing instead.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        first: Tensor,
        second: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        flat_mask: Tensor | None,
        compute: Callable[..., Tensor],
        step: int,
        divisor: float,
    ) -> Tensor:
        inputs = (first, second, weight, bias)
        needs = [t is not None and t.requires_grad for t in inputs]
        # Row gradients: each row belongs to one chunk, so the input dtype loses nothing; the
        # output layer's gradient sums over chunks and is accumulated in float32 or better.
        grads: list[Tensor | None] = [
            None if not need else torch.zeros_like(t) if i < 2 else torch.zeros_like(t, dtype=torch.promote_types(t.dtype, torch.float32))
            for i, (t, need) in enumerate(zip(inputs, needs, strict=True))
        ]
        total = torch.zeros((), dtype=torch.promote_types(first.dtype, torch.float32), device=first.device)
        if weight is None:  # rows of logits: a few rows at a time keep the intermediates small (and in cache)
            itemsize = total.element_size()
            step = min(step, max(1, _WORKING_SET_BYTES // max(1, second.shape[-1] * itemsize)))
        for start, stop, rows in _chunks(first.shape[0], step, flat_mask):
            with torch.enable_grad():
                leaves = [
                    None if t is None else (t[start:stop] if i < 2 else t).detach().requires_grad_(need)
                    for i, (t, need) in enumerate(zip(inputs, needs, strict=True))
                ]
                chunk_total = compute(leaves[0], leaves[1], rows, leaves[2], leaves[3]).sum()
                wanted = [leaf for leaf, need in zip(leaves, needs, strict=True) if need]
                chunk_grads = iter(torch.autograd.grad(chunk_total, wanted)) if wanted else iter(())
            total = total + chunk_total.detach().to(total.dtype)
            for i, need in enumerate(needs):
                if need:
                    target = grads[i][start:stop] if i < 2 else grads[i]  # type: ignore[index]
                    target.add_(next(chunk_grads).to(target.dtype))
        ctx.divisor = divisor
        ctx.dtypes = [None if t is None else t.dtype for t in inputs]
        # Kept as a plain attribute, not with save_for_backward: backward hands the buffers over
        # (scaled in place), so no second gradient-sized tensor ever exists and autograd can take
        # a buffer as the input's .grad without copying it.
        ctx.grads = grads
        return total / divisor

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grads = ctx.grads
        if grads is None:
            raise RuntimeError("this chunked divergence loss was already back-propagated without retain_graph")
        # Without retain_graph (training) the buffers are scaled in place and handed over; with it
        # (gradcheck, double use) they must survive this call, so scaled copies are returned.
        hand_over = not _keep_graph()
        if hand_over:
            ctx.grads = None
        scale = grad_output / ctx.divisor
        out: list[Tensor | None] = []
        for g, dtype in zip(grads, ctx.dtypes, strict=True):
            if g is None:
                out.append(None)
            elif hand_over and g.dtype == dtype:
                out.append(g.mul_(scale.to(g.dtype)))  # in place: no second gradient-sized tensor
            else:
                out.append((g * scale).to(dtype))
        return (*out, None, None, None, None)


def _divergence(
    row_fn: RowFn,
    first: Tensor,
    second: Tensor,
    *,
    names: tuple[str, str],
    mask: Tensor | None,
    labels: Tensor | None,
    ignore_index: int,
    temperature: float,
    reduction: Reduction,
    chunk_size: int | None,
    head: tuple[Tensor, Tensor | None] | None = None,
) -> Tensor:
    """Apply ``row_fn`` to every unmasked token of two logit tensors and reduce.

    This is the single place that implements validation, masking, dtype handling,
    chunking with checkpointing and the reductions shared by every divergence. With
    ``head = (weight, bias)``, ``first`` holds hidden states and each chunk's logits are
    ``first @ weight.T + bias``, computed (and, with chunking, recomputed in backward) per chunk.
    """
    _check_pair(first, second, names)
    weight, bias = head if head is not None else (None, None)
    first_vocab = weight.shape[0] if weight is not None else first.shape[-1]
    if first_vocab != second.shape[-1]:
        raise ValueError(
            f"{names[0]} has vocabulary {first_vocab}, {names[1]} {second.shape[-1]}: "
            "both distributions must be over the same vocabulary"
        )
    valid_temperature = isinstance(temperature, (int, float)) and math.isfinite(temperature)
    if not (valid_temperature and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"unknown reduction {reduction!r}; valid choices: {', '.join(_REDUCTIONS)}"
        )
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    lead_shape = first.shape[:-1]
    token_mask = _build_mask(lead_shape, first.device, mask, labels, ignore_index)
    dtype = torch.promote_types(torch.promote_types(first.dtype, second.dtype), torch.float32)

    first_rows = first.reshape(-1, first.shape[-1])  # a view for contiguous input
    second_rows = second.reshape(-1, second.shape[-1])
    num_rows = first_rows.shape[0]
    flat_mask = None if token_mask is None else token_mask.reshape(-1)

    step = chunk_size if chunk_size is not None else max(num_rows, 1)
    compute = functools.partial(_chunk_values, row_fn=row_fn, temperature=temperature, dtype=dtype)
    use_checkpoint = (
        chunk_size is not None
        and torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in (first, second, weight, bias))
    )

    # What the sum over tokens is divided by: 1 (sum), the counted tokens (mean; 0 tokens -> 0,
    # not NaN) or the first dimension (batchmean; 1-D logits are one token).
    divisor = 1.0
    if reduction == "mean":
        divisor = float(max(num_rows if flat_mask is None else int(flat_mask.sum()), 1))
    elif reduction == "batchmean":
        divisor = float(max(first.shape[0] if first.dim() > 1 else 1, 1))
    if use_checkpoint and reduction != "none":  # connected to every input that needs a gradient
        return _GradInForward.apply(first_rows, second_rows, weight, bias, flat_mask, compute, step, divisor)

    values: list[Tensor] = []
    positions: list[Tensor] = []
    for start, stop, rows in _chunks(num_rows, step, flat_mask):
        first_chunk, second_chunk = first_rows[start:stop], second_rows[start:stop]
        if use_checkpoint:
            chunk_values = checkpoint(compute, first_chunk, second_chunk, rows, weight, bias, use_reentrant=False)
        else:
            chunk_values = compute(first_chunk, second_chunk, rows, weight, bias)
        values.append(chunk_values)
        if reduction == "none":
            if rows is None:
                positions.append(torch.arange(start, stop, device=first.device))
            else:
                positions.append(rows + start)

    # With no counted token at all, an exact zero connected to every input keeps the loss
    # differentiable (it always has a grad_fn) without touching possibly-NaN masked values. Only
    # then: its gradient is a full-size zero tensor per input, which costs memory and time.
    anchor = None
    if not values:
        anchor = (first_rows[:0].sum() + second_rows[:0].sum()).to(dtype)
        for param in (weight, bias):
            if param is not None:
                anchor = anchor + param.reshape(-1)[:0].sum().to(dtype)

    if reduction == "none":
        out = torch.zeros(num_rows, dtype=dtype, device=first.device)
        if values:
            return out.index_copy(0, torch.cat(positions), torch.cat(values)).reshape(lead_shape)
        return (out + anchor).reshape(lead_shape)

    if anchor is not None:
        return anchor / divisor
    total = values[0].sum()
    for chunk_values in values[1:]:
        total = total + chunk_values.sum()
    return total / divisor


def _distill(
    row_fn: RowFn,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
    vocab_size: int | None = None,
    student_head: tuple[Tensor, Tensor | None] | None = None,
) -> Tensor:
    """Align vocabularies, then run ``row_fn(log Q_student, log P_teacher)`` per token."""
    if student_head is None:
        student_logits, teacher_logits = align_vocab(student_logits, teacher_logits, vocab_size)
    else:
        student_head, teacher_logits = _align_head(student_logits, student_head, teacher_logits, vocab_size)
    return _divergence(
        row_fn,
        student_logits,
        teacher_logits,
        names=("student", "teacher"),
        mask=mask,
        labels=labels,
        ignore_index=ignore_index,
        temperature=temperature,
        reduction=reduction,
        chunk_size=chunk_size,
        head=student_head,
    )


def _align_head(
    student_hidden: Tensor,
    head: tuple[Tensor, Tensor | None],
    teacher_logits: Tensor,
    vocab_size: int | None,
) -> tuple[tuple[Tensor, Tensor | None], Tensor]:
    """Check the student's output layer against its hidden states and the teacher's vocabulary."""
    if not (isinstance(head, (tuple, list)) and len(head) == 2):
        raise TypeError("student_head must be a (weight, bias) pair; bias may be None")
    weight, bias = head
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"student_head weight must be a (vocabulary, hidden) matrix, got {getattr(weight, 'shape', weight)}")
    if weight.shape[1] != student_hidden.shape[-1]:
        raise ValueError(
            f"student_head weight has shape {tuple(weight.shape)} but the student hidden states have "
            f"size {student_hidden.shape[-1]} in their last dimension (expected weight of shape (V, {student_hidden.shape[-1]}))"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"student_head bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
    if weight.device != student_hidden.device:
        raise ValueError(f"student_head weight is on {weight.device} but the hidden states on {student_hidden.device}")
    v_s, v_t = weight.shape[0], teacher_logits.shape[-1]
    if vocab_size is None:
        if v_s != v_t:
            raise ValueError(
                f"student has vocabulary {v_s}, teacher {v_t}: if they share a tokenizer and one embedding "
                "matrix is padded, pass vocab_size=<real vocabulary size> to drop the padded rows"
            )
        return (weight, bias), teacher_logits
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 0 < vocab_size <= min(v_s, v_t):
        raise ValueError(f"vocab_size must be an int in [1, {min(v_s, v_t)}], got {vocab_size!r}")
    return (weight[:vocab_size], None if bias is None else bias[:vocab_size]), teacher_logits[..., :vocab_size]


# --------------------------------------------------------------------------------------
# Public divergences
# --------------------------------------------------------------------------------------


def kl(
    p_logits: Tensor,
    q_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v), p = softmax(p_logits/T), q = softmax(q_logits/T).

    Named by its arguments rather than by student/teacher roles; +inf where p has mass
    and q has none.
    """
    return _divergence(
        _kl_rows,
        p_logits,
        q_logits,
        names=("p", "q"),
        mask=mask,
        labels=None,
        ignore_index=-100,
        temperature=temperature,
        reduction=reduction,
        chunk_size=chunk_size,
    )


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    **options: Unpack[DistillOptions],
) -> Tensor:
    """Forward KL(P || Q) = sum_v P_v (log P_v - log Q_v), P = teacher, Q = student.

    The standard ("supervised") distillation loss: mean-seeking, the student must cover
    all of the teacher's mass.  +inf if the student gives probability 0 where the teacher
    has mass (e.g. a -inf student logit).
    """
    return _distill(
        _forward_kl_rows, student_logits, teacher_logits, temperature=temperature, reduction=reduction, **options
    )


def backward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    **options: Unpack[DistillOptions],
) -> Tensor:
    """Backward (reverse) KL(Q || P) = sum_v Q_v (log Q_v - log P_v), P = teacher, Q = student.

    Mode-seeking: the student is pushed to put its mass where the teacher is confident
    rather than to cover everything.  +inf if the student has mass where P is exactly 0.
    """
    return _distill(
        _backward_kl_rows, student_logits, teacher_logits, temperature=temperature, reduction=reduction, **options
    )


def jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    **options: Unpack[DistillOptions],
) -> Tensor:
    """Generalised Jensen-Shannon divergence, P = teacher, Q = student.

    For 0 < beta < 1::

        JSD(beta) = beta * KL(P || M) + (1 - beta) * KL(Q || M),   M = beta * P + (1 - beta) * Q

    with ``log M = logaddexp(log P + log beta, log Q + log(1 - beta))`` (mixed in
    probability space, never by mixing log-probs).  JSD(0.5) is the usual symmetric
    Jensen-Shannon divergence, bounded by log 2; it is always finite.

    The formula tends to 0 as beta -> 0 or 1, so the end points are explicit cases, a
    deliberate discontinuity (same convention as the GKD paper and TRL):
    ``beta == 0`` returns :func:`forward_kl` (KL(P || Q)) and ``beta == 1`` returns
    :func:`backward_kl` (KL(Q || P)).  ``beta`` outside [0, 1] raises ValueError.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta!r}")

    def mixed(log_q: Tensor, log_p: Tensor) -> Tensor:
        log_m = _log_mix(log_p, log_q, beta)
        return beta * _kl_rows(log_p, log_m) + (1.0 - beta) * _kl_rows(log_q, log_m)

    rows: RowFn = mixed
    if beta == 0.0:
        rows = _forward_kl_rows
    elif beta == 1.0:
        rows = _backward_kl_rows
    return _distill(
        rows, student_logits, teacher_logits, temperature=temperature, reduction=reduction, **options
    )


def _check_alpha(alpha: float) -> None:
    """Skew KL needs alpha in [0, 1); alpha = 1 mixes away the other distribution entirely."""
    if alpha == 1.0:
        raise ValueError(
            "skew KL alpha must be in [0, 1): with alpha=1 the mixture equals the outer "
            "distribution, so the divergence is identically 0 and gives no training signal"
        )
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew KL alpha must be in [0, 1), got {alpha!r}")


def skew_forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    alpha: float = 0.1,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    **options: Unpack[DistillOptions],
) -> Tensor:
    """Skew forward KL (DistiLLM, Ko et al. 2024): KL(P || alpha * P + (1 - alpha) * Q).

    P = teacher, Q = student.  Mixing a little of P into the student keeps the loss
    finite (at most -log alpha) and its gradients tame.  The mixture is formed in
    probability space.  ``alpha == 0`` is exactly :func:`forward_kl`; alpha must be in [0, 1).
    """
    _check_alpha(alpha)

    def rows(log_q: Tensor, log_p: Tensor) -> Tensor:
        log_mix = log_q if alpha == 0.0 else _log_mix(log_p, log_q, alpha)
        return _kl_rows(log_p, log_mix)

    return _distill(
        rows, student_logits, teacher_logits, temperature=temperature, reduction=reduction, **options
    )


def skew_backward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    alpha: float = 0.1,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    **options: Unpack[DistillOptions],
) -> Tensor:
    """Skew backward KL (DistiLLM, Ko et al. 2024): KL(Q || alpha * Q + (1 - alpha) * P).

    P = teacher, Q = student.  The mixture is formed in probability space.
    ``alpha == 0`` is exactly :func:`backward_kl`; alpha must be in [0, 1).
    """
    _check_alpha(alpha)

    def rows(log_q: Tensor, log_p: Tensor) -> Tensor:
        log_mix = log_p if alpha == 0.0 else _log_mix(log_q, log_p, alpha)
        return _kl_rows(log_q, log_mix)

    return _distill(
        rows, student_logits, teacher_logits, temperature=temperature, reduction=reduction, **options
    )


def tvd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    **options: Unpack[DistillOptions],
) -> Tensor:
    """Total variation distance 0.5 * sum_v |P_v - Q_v|, P = teacher, Q = student; in [0, 1]."""
    return _distill(
        _tvd_rows, student_logits, teacher_logits, temperature=temperature, reduction=reduction, **options
    )


def soft_target_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    reduction: Reduction = "batchmean",
    **options: Unpack[DistillOptions],
) -> Tensor:
    """Hinton et al. (2015) soft-target loss: T^2 * KL(P_T || Q_T), P = teacher, Q = student.

    The T^2 factor keeps gradient magnitudes comparable across temperatures (soft-target
    gradients scale as 1/T^2).  Defaults follow common practice: T = 4, "batchmean".
    """
    loss = forward_kl(
        student_logits,
        teacher_logits,
        temperature=temperature,
        reduction=reduction,
        **options,
    )
    return loss * temperature**2


DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "forward_kl": forward_kl,
    "backward_kl": backward_kl,
    "jsd": jsd,
    "skew_forward_kl": skew_forward_kl,
    "skew_backward_kl": skew_backward_kl,
    "tvd": tvd,
    "soft_target": soft_target_loss,
}


def get_divergence(name: str) -> Callable[..., Tensor]:
    """Look up a distillation loss by name (e.g. from a config file)."""
    try:
        return DIVERGENCES[name]
    except KeyError:
        raise ValueError(
            f"unknown divergence {name!r}; valid choices: {', '.join(sorted(DIVERGENCES))}"
        ) from None
