"""Divergences between a student's full distribution and a sparse teacher (top-k + tail).

A stored or served teacher keeps, per target position, its ``k`` most probable token ids, their
log-probabilities at temperature 1 and ``tail_logprob = log(1 - sum_topk p)``, the log of the mass it
did not keep (:class:`SparseTeacher`). A top-k teacher is not a distribution over the vocabulary, so
every divergence here says how the missing mass is treated (``tail``):

``tail="bucket"`` (default)
    Both distributions are collapsed onto ``k + 1`` outcomes: the teacher's ``k`` tokens and one
    "rest" outcome holding everything else. The teacher's rest is ``tail_logprob``; the student's
    rest is ``log sum_{v not in top-k} q_v``, a log-sum-exp over the complement (no ``1 - sum``
    cancellation), computed with the top-k log-probabilities in one pass with a closed-form
    gradient (:func:`ktransfer.bucket_student.bucket_log_probs`). The loss is the exact divergence between these two (k+1)-outcome distributions.
    Collapsing outcomes never increases an f-divergence (data-processing inequality), so for every
    divergence here ``0 <= bucket <= dense``, with equality at ``k = V``; :func:`bucket_gap_bound`
    bounds ``dense - bucket`` per token.
``tail="renormalize"``
    The teacher's top-k is renormalised to sum to 1 and the student is restricted to the same ``k``
    ids and renormalised (``softmax`` of its ``k`` logits). This is a different loss, not an
    approximation of the dense one: it ignores how much mass the student puts outside the top-k.
    For forward KL, ``bucket = p_S * renormalize + KL(Bernoulli(p_S) || Bernoulli(q_S))`` with
    ``p_S``, ``q_S`` the teacher's and student's top-k masses. Equal to the dense loss at ``k = V``.

Temperature: the student is divided by ``T`` over its full vocabulary (exact). The teacher's stored
log-probabilities are at ``T = 1``; tempering a truncated distribution is exact only within the top-k
(``p_i^(1/T)`` up to normalisation). With ``renormalize`` that is all that is needed, so it is exact.
With ``bucket`` the tempered tail mass depends on how the tail is spread, which is not stored: it is
computed as if the tail mass were spread uniformly over the ``V - k`` untracked tokens (the
maximum-entropy completion), i.e. the tempered teacher's rest outcome has unnormalised log-mass
``log(V - k) + (tail_logprob - log(V - k)) / T``. This is exact at ``T = 1``, at ``k = V`` and for a
uniform tail, tends to the right limit (uniform) as ``T`` grows, and otherwise over-states the tail
for ``T > 1`` (power-mean inequality) and under-states it for ``T < 1``.

Cross-entropy on the labels in the same pass (``label_weight > 0``, with ``labels``): each counted
token's value is the divergence plus ``label_weight * -log softmax(z)[label]`` at temperature 1, the
hard-label loss that distillation runs add to the soft one. With ``tail="bucket"`` at temperature 1
the label joins the collapse as one more outcome (or is found among the teacher's ids), so the
student's log-partition and the gradient of both losses come from one pass over the vocabulary,
where a separate cross-entropy would take a second; the divergence is unchanged (the label's
outcome is merged back into the rest before it is applied). Otherwise the cross-entropy is computed
on the chunk's logits beside the divergence. Equal to the divergence plus ``label_weight`` times
``torch.nn.functional.cross_entropy`` on the same tokens.

Every function takes ``(student_logits, teacher)`` and the keyword options of
:mod:`ktransfer.divergences` (``mask``, ``labels``/``ignore_index``, ``temperature``, ``reduction``,
``chunk_size``, ``vocab_size``) with the same meaning; the formulas of the dense divergences are
applied unchanged to the collapsed distributions, so names follow the same rule: P = teacher,
Q = student, ``forward_kl`` is KL(P || Q), ``backward_kl`` is KL(Q || P). Computation is in
``promote_types(dtype, float32)``, ``0 * log 0 = 0`` with no NaN gradient, and with ``chunk_size``
the student's rows are processed a chunk at a time (gradients taken chunk by chunk in the forward
pass, as the dense chunked path does), so memory stays bounded. The teacher is treated as data: its
tensors receive gradients only if they require them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, TypedDict, get_args

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint
from typing_extensions import Unpack

from ktransfer.bucket_student import bucket_log_probs
from ktransfer.divergences import (
    _REDUCTIONS,
    _WORKING_SET_BYTES,
    Reduction,
    RowFn,
    _backward_kl_rows,
    _build_mask,
    _check_alpha,
    _chunks,
    _forward_kl_rows,
    _keep_graph,
    _kl_rows,
    _log_mix,
    _tvd_rows,
)

__all__ = [
    "SPARSE_DIVERGENCES",
    "TAILS",
    "SparseTeacher",
    "Tail",
    "bucket_gap_bound",
    "get_sparse_divergence",
    "narrow_topk",
    "sparse_backward_kl",
    "sparse_forward_kl",
    "sparse_jsd",
    "sparse_skew_backward_kl",
    "sparse_skew_forward_kl",
    "sparse_soft_target_loss",
    "sparse_tvd",
    "topk_log_probs",
]

Tail = Literal["bucket", "renormalize"]
TAILS: tuple[str, ...] = get_args(Tail)


class SparseOptions(TypedDict, total=False):
    """Keyword options shared by every sparse divergence (see :mod:`ktransfer.divergences`)."""

    mask: Tensor | None
    labels: Tensor | None
    ignore_index: int
    chunk_size: int | None
    vocab_size: int | None
    label_weight: float


# --------------------------------------------------------------------------------------
# The sparse teacher
# --------------------------------------------------------------------------------------


def _position(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    """The index tuple of a flat index into ``shape`` (for error messages)."""
    if len(shape) == 0:
        return ()
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), shape))


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate on both sides of x = -log 2 (Maechler 2012)."""
    x = x.clamp(max=0.0)
    near_zero = x > -math.log(2.0)
    return torch.where(near_zero, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# positions per chunk of the top-k: about 2 MiB of float32 logits, so a chunk's passes stay in cache
_TOPK_CHUNK_BYTES = 2 * 2**20


# rest mass below 1e-2 of the total: summed over the other tokens instead of taken as total - kept
_EXACT_REST_BELOW = 1e-2


def _rest_mass(z: Tensor, top: Tensor, k: int) -> Tensor:
    """sum_{v not in top-k} exp(z_v - max z) per row (float64): the tokens below the k-th, and those tied with it
    that the top-k left out."""
    largest, kth = top[:, :1], top[:, -1:]
    inside = z >= kth
    rest = (z - largest).exp_().masked_fill_(inside, 0.0).sum(-1).double()
    tied = inside.sum(-1) - k
    return rest + tied.double() * (kth - largest).squeeze(-1).double().exp()


def topk_log_probs(logits: Tensor, k: int, *, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The top-k of ``log_softmax(logits)`` and the log of the rest: (ids int64, log-probabilities, tail).

    ``logits`` (..., V); with ``mask`` (the leading shape, bool) only the positions where it is true,
    in order, as rows (N, k) and (N,). No checks beyond the arguments' types: :class:`SparseTeacher`
    (``from_logits``) or the store writer check what they receive. Computed a few positions at a time,
    so the passes over the vocabulary stay in cache and nothing of size N x V is copied. With m the
    largest logit: one top-k and one sum ``s = sum_v exp(z_v - m)`` per position; the kept mass
    ``s_top = sum_topk exp(z - m)`` (float64) and the rest ``s - s_top``, except where the rest is
    below 1e-2 of ``s``: there the difference would lose its digits, and the rest is summed over the
    other tokens (those below the k-th, and those tied with it that the top-k left out). The
    log-probabilities are ``z - m - log(s_top + rest)`` and the tail ``log rest - log(s_top + rest)``.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        raise TypeError("top-k log-probabilities need floating-point logits of shape (..., V)")
    vocab = logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an int in [1, {vocab}] (the vocabulary size), got {k!r}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.detach()
    if mask is not None and mask.shape != logits.shape[:-1]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected the logits' leading shape "
                         f"{tuple(logits.shape[:-1])}")
    # positions are read a chunk at a time, never by reshaping (a strided slice would be copied whole)
    flat = logits.view(-1, vocab) if mask is None and logits.is_contiguous() else None
    where: Tensor | None = None
    if flat is None:
        chosen = torch.ones(logits.shape[:-1], dtype=torch.bool) if mask is None else mask
        where = chosen.nonzero().to(logits.device)  # (n, leading dims)
        n = int(where.shape[0])
        lead: tuple[int, ...] = tuple(logits.shape[:-1]) if mask is None else (n,)
    else:
        n, lead = flat.shape[0], tuple(logits.shape[:-1])
    ids = torch.empty((n, k), dtype=torch.int64, device=logits.device)
    out = torch.empty((n, k), dtype=dtype, device=logits.device)
    tail = torch.empty(n, dtype=dtype, device=logits.device)
    step = max(1, _TOPK_CHUNK_BYTES // (4 * vocab))
    with torch.no_grad():
        for start in range(0, n, step):
            stop = min(start + step, n)
            z = (flat[start:stop] if where is None else logits[tuple(where[start:stop].T)]).to(dtype)
            top, chunk_ids = z.topk(k, dim=-1)
            largest = top[:, :1]
            shifted = (top - largest).double()
            kept = shifted.exp().sum(-1)
            total = (z - largest).exp_().sum(-1).double()
            rest = total - kept
            exact = rest < _EXACT_REST_BELOW * total
            if exact.any():  # the difference would lose the rest's digits: sum it over the other tokens
                rest[exact] = _rest_mass(z[exact], top[exact], k)
            log_total = (kept + rest).log()
            ids[start:stop] = chunk_ids
            out[start:stop] = shifted - log_total.unsqueeze(-1)
            tail[start:stop] = rest.log() - log_total
    return ids.reshape(*lead, k), out.reshape(*lead, k), tail.reshape(lead)


def narrow_topk(ids: Tensor, logprobs: Tensor, tail: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The top `k` of a stored top-K (k <= K) and its tail: the K - k smaller entries folded into the rest.

    ``ids`` and ``logprobs`` (..., K), ``tail`` (...). The k largest log-probabilities of each position are kept
    (in descending order, whatever the order given); the new tail is ``log(exp(tail) + sum of the dropped
    probabilities)``, summed in float64. The result is the top-k a build with k would have written, up to the
    rounding of the stored values, so one store at a large K serves every smaller k.
    """
    full = ids.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= full:
        raise ValueError(f"k must be an int in [1, {full}] (the stored top-k), got {k!r}")
    if k == full:
        return ids, logprobs, tail
    with torch.no_grad():
        order = logprobs.argsort(dim=-1, descending=True, stable=True)
        sorted_lp = logprobs.gather(-1, order)
        dropped = torch.cat([tail.unsqueeze(-1).double(), sorted_lp[..., k:].double()], dim=-1)
        new_tail = torch.logsumexp(dropped, dim=-1).to(tail.dtype)
    return ids.gather(-1, order[..., :k]), sorted_lp[..., :k], new_tail


def default_mass_tolerance(dtype: torch.dtype) -> float:
    """How far the stored total mass may be from 1 (in log space) before it is an error: rounding only."""
    return max(1e-4, 16 * torch.finfo(dtype).eps)


class SparseTeacher:
    """A teacher's top-k token ids, their log-probabilities and the log of the remaining mass.

    ``ids`` (..., k) integer, ``logprobs`` (..., k) floating (log-probabilities at temperature 1
    over the full vocabulary), ``tail_logprob`` (...) floating, ``log(1 - sum_k exp(logprobs))``
    (``-inf`` when the top-k holds all the mass). Checked on construction: matching shapes and
    devices, no NaN, no log-probability above 0, no repeated id at a position and a total mass
    ``exp(logsumexp(logprobs, tail_logprob))`` within ``mass_tolerance`` of 1 in log space
    (default: rounding of the dtype, :func:`default_mass_tolerance`). The divergences normalise
    the k + 1 masses exactly, so such rounding does not reach the loss. Entries with
    log-probability ``-inf`` are allowed (tokens of probability 0, e.g. padding).
    """

    __slots__ = ("ids", "logprobs", "mass_tolerance", "tail_logprob")

    def __init__(self, ids: Tensor, logprobs: Tensor, tail_logprob: Tensor, *, mass_tolerance: float | None = None) -> None:
        for name, t in (("ids", ids), ("logprobs", logprobs), ("tail_logprob", tail_logprob)):
            if not isinstance(t, Tensor):
                raise TypeError(f"SparseTeacher {name} must be a torch.Tensor, got {type(t).__name__}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"SparseTeacher ids must be an integer tensor (token ids), got {ids.dtype}")
        for name, t in (("logprobs", logprobs), ("tail_logprob", tail_logprob)):
            if not t.is_floating_point():
                raise TypeError(f"SparseTeacher {name} must be floating point, got {t.dtype}")
        if ids.dim() < 1 or ids.shape[-1] < 1:
            raise ValueError(f"SparseTeacher ids must have shape (..., k) with k >= 1, got {tuple(ids.shape)}")
        if logprobs.shape != ids.shape:
            raise ValueError(f"SparseTeacher logprobs have shape {tuple(logprobs.shape)} but ids {tuple(ids.shape)}: "
                             "they must match (one log-probability per kept token)")
        if tail_logprob.shape != ids.shape[:-1]:
            raise ValueError(f"SparseTeacher tail_logprob has shape {tuple(tail_logprob.shape)}, expected "
                             f"{tuple(ids.shape[:-1])} (the ids' shape without the last, top-k dimension)")
        if not (ids.device == logprobs.device == tail_logprob.device):
            raise ValueError(f"SparseTeacher tensors are on different devices: ids {ids.device}, logprobs "
                             f"{logprobs.device}, tail_logprob {tail_logprob.device}")
        self.ids = ids
        self.logprobs = logprobs
        self.tail_logprob = tail_logprob
        dtype = torch.promote_types(logprobs.dtype, tail_logprob.dtype)
        self.mass_tolerance = default_mass_tolerance(dtype) if mass_tolerance is None else float(mass_tolerance)
        self._check_values(self.mass_tolerance)

    def _check_values(self, tolerance: float) -> None:
        """Value checks: NaN, log-probabilities above 0, negative or repeated ids, total mass."""
        lead = self.shape
        with torch.no_grad():
            lp = self.logprobs.detach().double()
            tail = self.tail_logprob.detach().double()
            for name, t in (("logprobs", lp), ("tail_logprob", tail)):
                bad = torch.isnan(t) | (t > tolerance)
                if bad.any():
                    flat = int(bad.reshape(-1).nonzero()[0])
                    where = _position(flat, t.shape)
                    raise ValueError(f"SparseTeacher {name} at position {where} is {float(t.reshape(-1)[flat])!r}: "
                                     "log-probabilities must be <= 0 and not NaN (-inf is probability 0)")
            if (self.ids < 0).any():
                flat = int((self.ids < 0).reshape(-1).nonzero()[0])
                raise ValueError(f"SparseTeacher ids at position {_position(flat, self.ids.shape)} is "
                                 f"{int(self.ids.reshape(-1)[flat])}: token ids must be >= 0")
            if self.k > 1:
                ordered = self.ids.sort(dim=-1).values
                repeated = (ordered[..., 1:] == ordered[..., :-1]).any(dim=-1)
                if repeated.any():
                    flat = int(repeated.reshape(-1).nonzero()[0])
                    row = ordered.reshape(-1, self.k)[flat]
                    token = int(row[1:][row[1:] == row[:-1]][0])
                    raise ValueError(f"SparseTeacher ids at position {_position(flat, lead)} hold token {token} "
                                     "more than once: the top-k ids of a position must be distinct")
            total = torch.logsumexp(torch.cat([lp, tail.unsqueeze(-1)], dim=-1), dim=-1)
            off = total.abs() > tolerance
            if off.any():
                flat = int(off.reshape(-1).nonzero()[0])
                top = float(lp.reshape(-1, self.k)[flat].exp().sum())
                rest = float(tail.reshape(-1)[flat].exp())
                raise ValueError(
                    f"SparseTeacher mass at position {_position(flat, lead)} is {top + rest:.6g} (top-k {top:.6g} + "
                    f"tail {rest:.6g}), not 1: logprobs and tail_logprob must describe one distribution "
                    f"(|log total| <= mass_tolerance={tolerance:g}); build it with SparseTeacher.from_topk to "
                    "derive the tail from the top-k"
                )

    @property
    def k(self) -> int:
        """Number of kept tokens per position."""
        return int(self.ids.shape[-1])

    @property
    def shape(self) -> torch.Size:
        """Shape of the positions (the ids' shape without the top-k dimension)."""
        return self.ids.shape[:-1]

    @property
    def device(self) -> torch.device:
        """Device of the teacher's tensors."""
        return self.ids.device

    def __repr__(self) -> str:
        return f"SparseTeacher(positions={tuple(self.shape)}, k={self.k}, dtype={self.logprobs.dtype}, device={self.device})"

    def to(self, device: torch.device | str) -> SparseTeacher:
        """The same teacher on ``device``."""
        return SparseTeacher(self.ids.to(device), self.logprobs.to(device), self.tail_logprob.to(device),
                             mass_tolerance=self.mass_tolerance)

    @classmethod
    def from_logits(cls, logits: Tensor, k: int) -> SparseTeacher:
        """Top-k of ``log_softmax(logits)`` (temperature 1) and the tail, ``log(1 - sum_topk p)``.

        Computed by :func:`topk_log_probs`: a few positions at a time, the kept and the remaining
        mass summed apart, so a small tail keeps its relative precision.
        """
        if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
            raise TypeError("SparseTeacher.from_logits needs floating-point logits of shape (..., V)")
        return cls(*topk_log_probs(logits, k))

    def narrow(self, k: int) -> SparseTeacher:
        """The same teacher with only its top ``k`` tokens kept, the rest folded into the tail (:func:`narrow_topk`)."""
        return SparseTeacher(*narrow_topk(self.ids, self.logprobs, self.tail_logprob, k),
                             mass_tolerance=self.mass_tolerance)

    @classmethod
    def from_topk(cls, ids: Tensor, logprobs: Tensor, *, mass_tolerance: float | None = None) -> SparseTeacher:
        """A teacher from top-k ids and log-probabilities only: ``tail = log(1 - sum exp(logprobs))``.

        Computed stably (log1mexp); a top-k mass above 1 by more than ``mass_tolerance`` is an error,
        one above 1 by rounding only gives a tail of probability 0.
        """
        if not isinstance(logprobs, Tensor) or not logprobs.is_floating_point():
            raise TypeError("SparseTeacher.from_topk needs floating-point logprobs")
        with torch.no_grad():
            top = torch.logsumexp(logprobs.detach().to(torch.promote_types(logprobs.dtype, torch.float32)), dim=-1)
            tail = torch.where(top >= 0, torch.full_like(top, -math.inf), _log1mexp(top))
        if mass_tolerance is None:
            mass_tolerance = default_mass_tolerance(logprobs.dtype)
        over = top > mass_tolerance
        if over.any():
            flat = int(over.reshape(-1).nonzero()[0])
            raise ValueError(f"SparseTeacher top-k mass at position {_position(flat, top.shape)} is "
                             f"{float(top.reshape(-1)[flat].exp()):.6g} > 1: these are not log-probabilities of one "
                             "distribution")
        return cls(ids, logprobs, tail.to(logprobs.dtype), mass_tolerance=mass_tolerance)


# --------------------------------------------------------------------------------------
# Collapsed distributions of one chunk
# --------------------------------------------------------------------------------------


def _bucket_teacher(logprobs: Tensor, tail: Tensor, vocab: int, temperature: float) -> Tensor:
    """The teacher's (k+1)-outcome log-probabilities at ``temperature`` (uniform-tail completion)."""
    k = logprobs.shape[-1]
    untracked = vocab - k
    if temperature == 1.0:
        rest = tail
    elif untracked == 0:
        rest = torch.full_like(tail, -math.inf)
    else:
        log_n = math.log(untracked)
        rest = log_n + (tail - log_n) / temperature
    scaled = logprobs if temperature == 1.0 else logprobs / temperature
    return torch.log_softmax(torch.cat([scaled, rest.unsqueeze(-1)], dim=-1), dim=-1)


def _collapsed(
    z: Tensor, ids: Tensor, logprobs: Tensor, tail: Tensor, *, mode: str, temperature: float
) -> tuple[Tensor, Tensor]:
    """(student, teacher) log-probabilities over the collapsed outcomes, from logits ``z`` (rows, V)."""
    if mode == "renormalize":
        z_top = z.gather(-1, ids)
        if temperature != 1.0:
            z_top = z_top / temperature
        scaled = logprobs if temperature == 1.0 else logprobs / temperature
        return torch.log_softmax(z_top, dim=-1), torch.log_softmax(scaled, dim=-1)
    log_q = bucket_log_probs(z, ids, temperature=temperature)
    return log_q, _bucket_teacher(logprobs, tail, z.shape[-1], temperature)


def _free_ids(ids: Tensor) -> Tensor:
    """Per row, the smallest token id that is not among the row's distinct ``ids`` (at most k)."""
    ordered = ids.sort(dim=-1).values
    gaps = ordered != torch.arange(ids.shape[-1], device=ids.device)  # the first i with ordered[i] != i is free
    first = gaps.to(torch.int8).argmax(dim=-1)
    return torch.where(gaps.any(dim=-1), first, torch.full_like(first, ids.shape[-1]))


def _collapsed_with_label(
    z: Tensor, ids: Tensor, labels: Tensor, logprobs: Tensor, tail: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Bucket collapse at temperature 1 that also yields ``log q[label]``: (student, teacher, label log-prob).

    A label outside the teacher's ids is one more outcome of the student's collapse, merged back into
    the rest for the divergence; a label among them is read off its outcome. Rows whose label is among
    the ids take a free id as the extra outcome, so the collapse's ids stay distinct.
    """
    k, vocab = ids.shape[-1], z.shape[-1]
    log_p = _bucket_teacher(logprobs, tail, vocab, 1.0)
    hit = ids == labels.unsqueeze(-1)
    inside = hit.any(dim=-1)
    if k >= vocab:  # every token is an outcome already
        log_q = bucket_log_probs(z, ids)
        return log_q, log_p, log_q.gather(-1, hit.to(torch.int8).argmax(-1, keepdim=True)).squeeze(-1)
    extra = torch.where(inside, _free_ids(ids), labels)
    log_q_ext = bucket_log_probs(z, torch.cat([ids, extra.unsqueeze(-1)], dim=-1))
    rest = torch.logaddexp(log_q_ext[:, k], log_q_ext[:, k + 1])
    log_q = torch.cat([log_q_ext[:, :k], rest.unsqueeze(-1)], dim=-1)
    where = torch.where(inside, hit.to(torch.int8).argmax(-1), torch.full_like(labels, k))
    return log_q, log_p, log_q_ext.gather(-1, where.unsqueeze(-1)).squeeze(-1)


def _chunk_values(
    student: Tensor,
    logprobs: Tensor,
    tail: Tensor,
    ids: Tensor,
    rows: Tensor | None,
    *,
    row_fn: RowFn,
    mode: str,
    temperature: float,
    dtype: torch.dtype,
    label_weight: float = 0.0,
) -> Tensor:
    """Per-row divergence of one chunk: select rows, upcast, collapse, apply the dense formula.

    With ``label_weight > 0`` the last column of ``ids`` holds each row's label, and the row's value
    adds ``label_weight`` times its cross-entropy (in the collapse's pass where it can).
    """
    if rows is not None:
        student, logprobs, tail, ids = (t.index_select(0, rows) for t in (student, logprobs, tail, ids))
    z, logprobs, tail = student.to(dtype), logprobs.to(dtype), tail.to(dtype)
    if label_weight == 0.0:
        log_q, log_p = _collapsed(z, ids, logprobs, tail, mode=mode, temperature=temperature)
        return row_fn(log_q, log_p)
    ids, labels = ids[:, :-1], ids[:, -1]
    if mode == "bucket" and temperature == 1.0:
        log_q, log_p, label_log_q = _collapsed_with_label(z, ids, labels, logprobs, tail)
        return row_fn(log_q, log_p) - label_weight * label_log_q
    log_q, log_p = _collapsed(z, ids, logprobs, tail, mode=mode, temperature=temperature)
    return row_fn(log_q, log_p) + label_weight * torch.nn.functional.cross_entropy(z, labels, reduction="none")


ChunkFn = Callable[[Tensor, Tensor, Tensor, Tensor, "Tensor | None"], Tensor]


class _SparseGradInForward(torch.autograd.Function):
    """A chunked scalar sparse loss whose gradients are taken chunk by chunk in the forward pass.

    Same scheme as the dense chunked path: one gradient buffer per differentiable input and one
    chunk's intermediates exist at a time; backward scales the buffers and hands them over.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student: Tensor,
        logprobs: Tensor,
        tail: Tensor,
        ids: Tensor,
        flat_mask: Tensor | None,
        compute: ChunkFn,
        step: int,
        divisor: float,
    ) -> Tensor:
        inputs = (student, logprobs, tail)
        needs = [t.requires_grad for t in inputs]
        grads = [torch.zeros_like(t) if need else None for t, need in zip(inputs, needs, strict=True)]
        total = torch.zeros((), dtype=torch.promote_types(student.dtype, torch.float32), device=student.device)
        for start, stop, rows in _chunks(student.shape[0], step, flat_mask):
            with torch.enable_grad():
                leaves = [t[start:stop].detach().requires_grad_(need) for t, need in zip(inputs, needs, strict=True)]
                chunk_total = compute(leaves[0], leaves[1], leaves[2], ids[start:stop], rows).sum()
                wanted = [leaf for leaf, need in zip(leaves, needs, strict=True) if need]
                chunk_grads = iter(torch.autograd.grad(chunk_total, wanted)) if wanted else iter(())
            total = total + chunk_total.detach().to(total.dtype)
            for i, need in enumerate(needs):
                if need:
                    grads[i][start:stop].add_(next(chunk_grads).to(grads[i].dtype))  # type: ignore[index]
        ctx.divisor = divisor
        ctx.dtypes = [t.dtype for t in inputs]
        ctx.grads = grads
        return total / divisor

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grads = ctx.grads
        if grads is None:
            raise RuntimeError("this chunked sparse divergence loss was already back-propagated without retain_graph")
        hand_over = not _keep_graph()
        if hand_over:
            ctx.grads = None
        scale = grad_output / ctx.divisor
        out: list[Tensor | None] = []
        for g, dtype in zip(grads, ctx.dtypes, strict=True):
            if g is None:
                out.append(None)
            elif hand_over and g.dtype == dtype:
                out.append(g.mul_(scale.to(g.dtype)))
            else:
                out.append((g * scale).to(dtype))
        return (*out, None, None, None, None, None)


# --------------------------------------------------------------------------------------
# Shared mechanics
# --------------------------------------------------------------------------------------


def _check_student(student_logits: Tensor, teacher: SparseTeacher, vocab_size: int | None) -> Tensor:
    """Validate the student logits against the teacher; slice padded vocabulary rows."""
    if not isinstance(teacher, SparseTeacher):
        raise TypeError(f"teacher must be a SparseTeacher (top-k ids, logprobs, tail_logprob), got {type(teacher).__name__}")
    if not isinstance(student_logits, Tensor):
        raise TypeError(f"student logits must be a torch.Tensor, got {type(student_logits).__name__}")
    if not student_logits.is_floating_point() or student_logits.dim() < 1:
        raise TypeError(f"student logits must be floating point with a vocabulary dimension, got {student_logits.dtype} "
                        f"of shape {tuple(student_logits.shape)}")
    if student_logits.shape[:-1] != teacher.shape:
        raise ValueError(f"student logits have shape {tuple(student_logits.shape)} but the teacher has positions "
                         f"{tuple(teacher.shape)} (k={teacher.k}): all dimensions except the last must match")
    if student_logits.device != teacher.device:
        raise ValueError(f"student logits are on {student_logits.device} but the teacher on {teacher.device}")
    vocab = student_logits.shape[-1]
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 0 < vocab_size <= vocab:
            raise ValueError(f"vocab_size must be an int in [1, {vocab}], got {vocab_size!r}")
        student_logits, vocab = student_logits[..., :vocab_size], vocab_size
    if teacher.k > vocab:
        raise ValueError(f"teacher keeps k={teacher.k} tokens per position but the student vocabulary has {vocab}")
    if teacher.ids.numel() and int(teacher.ids.max()) >= vocab:
        flat = int((teacher.ids >= vocab).reshape(-1).nonzero()[0])
        raise ValueError(
            f"teacher token id {int(teacher.ids.reshape(-1)[flat])} at position "
            f"{_position(flat // teacher.k, teacher.shape)} is outside the student vocabulary of {vocab} tokens"
            + ("" if vocab_size is not None else "; if one embedding matrix is padded, pass vocab_size=<real size>")
        )
    return student_logits


def _check_label_weight(label_weight: float, labels: Tensor | None, ignore_index: int, vocab: int) -> None:
    """``label_weight`` is a finite number >= 0; when > 0, ``labels`` are given and every counted one is a token id."""
    valid = isinstance(label_weight, (int, float)) and not isinstance(label_weight, bool) and math.isfinite(label_weight)
    if not (valid and label_weight >= 0):
        raise ValueError(f"label_weight must be a finite number >= 0, got {label_weight!r}")
    if label_weight == 0:
        return
    if labels is None:
        raise ValueError("label_weight > 0 adds cross-entropy on the labels: pass labels (the target token ids, "
                         f"{ignore_index} where a position has none)")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer token ids, got {labels.dtype}")
    counted = labels != ignore_index
    bad = counted & ((labels < 0) | (labels >= vocab))
    if bad.any():
        flat = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(f"label {int(labels.reshape(-1)[flat])} at position {_position(flat, labels.shape)} is not a "
                         f"token id of the student's vocabulary of {vocab} tokens (label {ignore_index} marks a position "
                         "without a target)")


def _sparse_divergence(
    row_fn: RowFn,
    student_logits: Tensor,
    teacher: SparseTeacher,
    *,
    tail: Tail,
    temperature: float,
    reduction: Reduction,
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
    label_weight: float = 0.0,
) -> Tensor:
    """Apply ``row_fn(log Q, log P)`` to the collapsed distributions of every counted token and reduce."""
    student_logits = _check_student(student_logits, teacher, vocab_size)
    _check_label_weight(label_weight, labels, ignore_index, student_logits.shape[-1])
    if tail not in TAILS:
        raise ValueError(f"unknown tail treatment {tail!r}; valid choices: {', '.join(TAILS)}")
    valid_temperature = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and math.isfinite(temperature)
    if not (valid_temperature and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid choices: {', '.join(_REDUCTIONS)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if tail == "renormalize":
        empty = torch.isneginf(teacher.logprobs.detach()).all(dim=-1)
        if empty.any():
            where = _position(int(empty.reshape(-1).nonzero()[0]), teacher.shape)
            raise ValueError(f"tail='renormalize' needs top-k mass > 0, but every kept log-probability at position "
                             f"{where} is -inf; use tail='bucket'")

    lead_shape = teacher.shape
    token_mask = _build_mask(lead_shape, student_logits.device, mask, labels, ignore_index)
    dtype = torch.promote_types(
        torch.promote_types(student_logits.dtype, torch.promote_types(teacher.logprobs.dtype, teacher.tail_logprob.dtype)),
        torch.float32,
    )
    vocab, k = student_logits.shape[-1], teacher.k
    student_rows = student_logits.reshape(-1, vocab)
    ids_rows = teacher.ids.reshape(-1, k)
    if label_weight:  # each row's label rides along as one more id column, so chunks and row selection carry it
        assert labels is not None
        ids_rows = torch.cat([ids_rows.to(torch.int64), labels.reshape(-1, 1).to(ids_rows.device, torch.int64)], -1)
    lp_rows = teacher.logprobs.reshape(-1, k)
    tail_rows = teacher.tail_logprob.reshape(-1)
    num_rows = student_rows.shape[0]
    flat_mask = None if token_mask is None else token_mask.reshape(-1)

    def compute(student: Tensor, logprobs: Tensor, tail_lp: Tensor, ids: Tensor, rows: Tensor | None) -> Tensor:
        return _chunk_values(student, logprobs, tail_lp, ids, rows, row_fn=row_fn, mode=tail,
                             temperature=float(temperature), dtype=dtype, label_weight=float(label_weight))

    divisor = 1.0
    if reduction == "mean":
        divisor = float(max(num_rows if flat_mask is None else int(flat_mask.sum()), 1))
    elif reduction == "batchmean":
        divisor = float(max(student_logits.shape[0] if student_logits.dim() > 1 else 1, 1))
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (student_logits, teacher.logprobs, teacher.tail_logprob))
    use_checkpoint = chunk_size is not None and needs_grad
    step = chunk_size if chunk_size is not None else max(num_rows, 1)
    if use_checkpoint and reduction != "none":
        itemsize = torch.empty((), dtype=dtype).element_size()
        step = min(step, max(1, _WORKING_SET_BYTES // max(1, vocab * itemsize)))
        return _SparseGradInForward.apply(student_rows, lp_rows, tail_rows, ids_rows, flat_mask, compute, step, divisor)

    values: list[Tensor] = []
    positions: list[Tensor] = []
    for start, stop, rows in _chunks(num_rows, step, flat_mask):
        args = (student_rows[start:stop], lp_rows[start:stop], tail_rows[start:stop], ids_rows[start:stop], rows)
        values.append(checkpoint(compute, *args, use_reentrant=False) if use_checkpoint else compute(*args))
        if reduction == "none":
            positions.append(torch.arange(start, stop, device=student_rows.device) if rows is None else rows + start)

    anchor = None
    if not values:  # no counted token: an exact zero that is still connected to the inputs
        anchor = (student_rows[:0].sum() + lp_rows[:0].sum() + tail_rows[:0].sum()).to(dtype)
    if reduction == "none":
        out = torch.zeros(num_rows, dtype=dtype, device=student_rows.device)
        if values:
            return out.index_copy(0, torch.cat(positions), torch.cat(values)).reshape(lead_shape)
        return (out + anchor).reshape(lead_shape)
    if anchor is not None:
        return anchor / divisor
    total = values[0].sum()
    for chunk_values in values[1:]:
        total = total + chunk_values.sum()
    return total / divisor


# --------------------------------------------------------------------------------------
# Public sparse divergences
# --------------------------------------------------------------------------------------


def _jsd_rows(beta: float) -> RowFn:
    """Generalised JSD(beta) per row, with the end points as the plain KLs (as :func:`ktransfer.divergences.jsd`)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta!r}")
    if beta == 0.0:
        return _forward_kl_rows
    if beta == 1.0:
        return _backward_kl_rows

    def rows(log_q: Tensor, log_p: Tensor) -> Tensor:
        log_m = _log_mix(log_p, log_q, beta)
        return beta * _kl_rows(log_p, log_m) + (1.0 - beta) * _kl_rows(log_q, log_m)

    return rows


def _skew_forward_rows(alpha: float) -> RowFn:
    """KL(P || alpha P + (1 - alpha) Q) per row."""
    _check_alpha(alpha)

    def rows(log_q: Tensor, log_p: Tensor) -> Tensor:
        return _kl_rows(log_p, log_q if alpha == 0.0 else _log_mix(log_p, log_q, alpha))

    return rows


def _skew_backward_rows(alpha: float) -> RowFn:
    """KL(Q || alpha Q + (1 - alpha) P) per row."""
    _check_alpha(alpha)

    def rows(log_q: Tensor, log_p: Tensor) -> Tensor:
        return _kl_rows(log_q, log_p if alpha == 0.0 else _log_mix(log_q, log_p, alpha))

    return rows


def sparse_forward_kl(
    student_logits: Tensor, teacher: SparseTeacher, *, tail: Tail = "bucket", temperature: float = 1.0,
    reduction: Reduction = "mean", **options: Unpack[SparseOptions],
) -> Tensor:
    """Forward KL(P || Q) = sum_o P_o (log P_o - log Q_o) over the collapsed outcomes o, P = teacher, Q = student.

    ``bucket``: o ranges over the top-k and the rest; ``0 <= bucket <= dense`` and
    ``dense - bucket = p_R * KL(P(.|R) || Q(.|R))`` exactly (R = untracked tokens, p_R = tail mass).
    """
    return _sparse_divergence(_forward_kl_rows, student_logits, teacher, tail=tail, temperature=temperature,
                              reduction=reduction, **options)


def sparse_backward_kl(
    student_logits: Tensor, teacher: SparseTeacher, *, tail: Tail = "bucket", temperature: float = 1.0,
    reduction: Reduction = "mean", **options: Unpack[SparseOptions],
) -> Tensor:
    """Backward KL(Q || P) = sum_o Q_o (log Q_o - log P_o) over the collapsed outcomes, P = teacher, Q = student.

    ``bucket``: ``dense - bucket = q_R * KL(Q(.|R) || P(.|R))``, which depends on how the teacher
    spreads its tail (not stored), so no bound follows from the stored data alone.
    """
    return _sparse_divergence(_backward_kl_rows, student_logits, teacher, tail=tail, temperature=temperature,
                              reduction=reduction, **options)


def sparse_jsd(
    student_logits: Tensor, teacher: SparseTeacher, *, beta: float = 0.5, tail: Tail = "bucket",
    temperature: float = 1.0, reduction: Reduction = "mean", **options: Unpack[SparseOptions],
) -> Tensor:
    """Generalised JSD(beta) = beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q, collapsed.

    Mixed in probability space; ``beta == 0`` is :func:`sparse_forward_kl`, ``beta == 1``
    :func:`sparse_backward_kl` (the definition of :func:`ktransfer.divergences.jsd`).
    """
    return _sparse_divergence(_jsd_rows(beta), student_logits, teacher, tail=tail, temperature=temperature,
                              reduction=reduction, **options)


def sparse_skew_forward_kl(
    student_logits: Tensor, teacher: SparseTeacher, *, alpha: float = 0.1, tail: Tail = "bucket",
    temperature: float = 1.0, reduction: Reduction = "mean", **options: Unpack[SparseOptions],
) -> Tensor:
    """Skew forward KL(P || alpha P + (1 - alpha) Q) over the collapsed outcomes; alpha in [0, 1)."""
    return _sparse_divergence(_skew_forward_rows(alpha), student_logits, teacher, tail=tail,
                              temperature=temperature, reduction=reduction, **options)


def sparse_skew_backward_kl(
    student_logits: Tensor, teacher: SparseTeacher, *, alpha: float = 0.1, tail: Tail = "bucket",
    temperature: float = 1.0, reduction: Reduction = "mean", **options: Unpack[SparseOptions],
) -> Tensor:
    """Skew backward KL(Q || alpha Q + (1 - alpha) P) over the collapsed outcomes; alpha in [0, 1)."""
    return _sparse_divergence(_skew_backward_rows(alpha), student_logits, teacher, tail=tail,
                              temperature=temperature, reduction=reduction, **options)


def sparse_tvd(
    student_logits: Tensor, teacher: SparseTeacher, *, tail: Tail = "bucket", temperature: float = 1.0,
    reduction: Reduction = "mean", **options: Unpack[SparseOptions],
) -> Tensor:
    """Total variation 0.5 * sum_o |P_o - Q_o| over the collapsed outcomes; ``dense - bucket <= min(p_R, q_R)``."""
    return _sparse_divergence(_tvd_rows, student_logits, teacher, tail=tail, temperature=temperature,
                              reduction=reduction, **options)


def sparse_soft_target_loss(
    student_logits: Tensor, teacher: SparseTeacher, *, tail: Tail = "bucket", temperature: float = 4.0,
    reduction: Reduction = "batchmean", **options: Unpack[SparseOptions],
) -> Tensor:
    """Hinton et al. (2015) soft-target loss T^2 * KL(P_T || Q_T) over the collapsed outcomes (T = 4, batchmean)."""
    if options.get("label_weight"):  # the T^2 factor scales the soft loss only
        options = {**options, "label_weight": options["label_weight"] / temperature**2}
    loss = sparse_forward_kl(student_logits, teacher, tail=tail, temperature=temperature, reduction=reduction,
                             **options)
    return loss * temperature**2


SPARSE_DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "forward_kl": sparse_forward_kl,
    "backward_kl": sparse_backward_kl,
    "jsd": sparse_jsd,
    "skew_forward_kl": sparse_skew_forward_kl,
    "skew_backward_kl": sparse_skew_backward_kl,
    "tvd": sparse_tvd,
    "soft_target": sparse_soft_target_loss,
}


def get_sparse_divergence(name: str) -> Callable[..., Tensor]:
    """Look up a sparse-teacher loss by the name of its dense counterpart (e.g. from a config file)."""
    try:
        return SPARSE_DIVERGENCES[name]
    except KeyError:
        raise ValueError(
            f"unknown sparse divergence {name!r}; valid choices: {', '.join(sorted(SPARSE_DIVERGENCES))}"
        ) from None


# --------------------------------------------------------------------------------------
# How far the bucket loss can be below the dense one
# --------------------------------------------------------------------------------------


def bucket_gap_bound(
    divergence: str, student_logits: Tensor, teacher: SparseTeacher, *, beta: float = 0.5, alpha: float = 0.1,
    vocab_size: int | None = None,
) -> Tensor:
    """Per-token upper bound on ``dense - bucket`` at temperature 1, from the stored teacher and the student.

    Each divergence is a sum over tokens of f(p_v, q_v) with f jointly convex and 1-homogeneous, so
    ``dense - bucket = sum_{v in R} f(p_v, q_v) - f(p_R, q_R) >= 0`` (R = untracked tokens). Bounds:

    * forward_kl: ``p_R * [min(0, log p_min - log p_R) + log q_R - log q_min]``, from
      ``KL(P_R || Q_R) <= max log(P_R / Q_R)``, where p_min is the smallest kept teacher probability
      (a top-k teacher has no tail token above it) and q_min the student's smallest probability in R.
    * jsd(beta): ``beta p_R log(1/beta) + (1 - beta) q_R log(1/(1 - beta)) - f(p_R, q_R)``.
    * skew_forward_kl(alpha): ``p_R log(1/alpha) - f(p_R, q_R)``; skew_backward_kl: ``q_R log(1/alpha) - f``.
    * tvd: ``min(p_R, q_R)``.
    * backward_kl: ``+inf`` (the gap ``q_R KL(Q_R || P_R)`` depends on the unstored teacher tail).

    Assumes the stored ids are the teacher's k most probable tokens (used by forward_kl only).
    """
    names = ("forward_kl", "backward_kl", "jsd", "skew_forward_kl", "skew_backward_kl", "tvd")
    if divergence not in names:
        raise ValueError(f"no bucket gap bound for {divergence!r}; valid choices: {', '.join(names)}")
    student_logits = _check_student(student_logits, teacher, vocab_size)
    with torch.no_grad():
        dtype = torch.promote_types(student_logits.dtype, torch.float64)
        z = student_logits.detach().to(dtype).reshape(-1, student_logits.shape[-1])
        ids = teacher.ids.reshape(-1, teacher.k)
        log_q, log_p = _collapsed(z, ids, teacher.logprobs.detach().to(dtype).reshape(-1, teacher.k),
                                  teacher.tail_logprob.detach().to(dtype).reshape(-1), mode="bucket", temperature=1.0)
        lq_r, lp_r = log_q[:, -1:], log_p[:, -1:]
        p_r, q_r = lp_r.exp().squeeze(-1), lq_r.exp().squeeze(-1)
        if divergence == "forward_kl" or (divergence == "skew_forward_kl" and alpha == 0.0):
            log_p_min = log_p[:, :-1].min(dim=-1).values
            log_z = torch.logsumexp(z, dim=-1)
            log_q_min = z.scatter(-1, ids, math.inf).min(dim=-1).values - log_z
            ratio = (log_p_min - lp_r.squeeze(-1)).clamp(max=0.0) + lq_r.squeeze(-1) - log_q_min
            bound = torch.where(p_r > 0, p_r * ratio.clamp(min=0.0), torch.zeros_like(p_r))
        elif divergence == "backward_kl" or (divergence == "skew_backward_kl" and alpha == 0.0):
            bound = torch.where(q_r > 0, torch.full_like(q_r, math.inf), torch.zeros_like(q_r))
        elif divergence == "tvd":
            bound = torch.minimum(p_r, q_r)
        else:
            if divergence == "jsd":
                if beta in (0.0, 1.0):
                    return bucket_gap_bound("forward_kl" if beta == 0.0 else "backward_kl", student_logits, teacher)
                most = beta * p_r * math.log(1 / beta) + (1 - beta) * q_r * math.log(1 / (1 - beta))
                f_rest = _jsd_rows(beta)(lq_r, lp_r)
            elif divergence == "skew_forward_kl":
                most = p_r * math.log(1 / alpha) if alpha > 0 else torch.full_like(p_r, math.inf)
                f_rest = _skew_forward_rows(alpha)(lq_r, lp_r)
            else:
                most = q_r * math.log(1 / alpha) if alpha > 0 else torch.full_like(q_r, math.inf)
                f_rest = _skew_backward_rows(alpha)(lq_r, lp_r)
            bound = (most - f_rest).clamp(min=0.0)
    return bound.reshape(teacher.shape)
