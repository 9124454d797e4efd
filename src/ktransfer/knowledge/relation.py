"""Relations as knowledge: not the hidden states themselves, but how they relate.

Three variants, all on captured layer outputs (see `layer_map` for choosing layers):

* ``fsp`` (between layers, Yim et al. 2017): for consecutive mapped layers a, b the "flow" matrix
  G_ab = (1/N) sum_n h_a[n] h_b[n]^T over the N positions of an example (d_a x d_b); student
  and teacher matrices are compared by MSE. Needs equal student and teacher widths per layer.
* ``sample`` (between examples, similarity-preserving): per layer, pooled states P (batch x d),
  G = P P^T with each row L2-normalised; MSE between student and teacher G (batch x batch).
  Widths may differ.
* ``token`` (between tokens, MiniLM-style): per layer, the states split into R relation heads,
  A_r = softmax(H_r H_r^T / sqrt(d / R)) over tokens; KL(teacher || student) per row. Pointing
  `path` at the self-attention's value projection ("attention.self.value") gives MiniLM's
  value relation; at the layer output, a hidden-state self-relation. Widths may differ.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ktransfer.knowledge.attention import attention_distance
from ktransfer.knowledge.base import StepView, batch_examples, mask_units
from ktransfer.knowledge.feature import hidden_tensor, position_mask, upcast
from ktransfer.knowledge.layer_map import LayerTaps, TappedTerm

VARIANTS = ("fsp", "sample", "token")


def fsp_matrix(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """G = (1/N) sum_n a[n] b[n]^T per example for (batch, N, d) inputs; (batch, d_a, d_b).

    2-D inputs (batch, d) are one position per example. Masked positions do not count in N.
    """
    if a.dim() == 2:
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    if mask is None:
        mask = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device)
    m = mask.to(a.dtype).unsqueeze(-1)
    return torch.einsum("bnd,bne->bde", a * m, b * m) / m.sum(1, keepdim=True).clamp_min(1.0)


def pooled(h: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over unmasked positions of (batch, N, d) states; (batch, d) states as they are."""
    if h.dim() == 2:
        return h
    if mask is None:
        return h.mean(1)
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def sample_relation(p: Tensor) -> Tensor:
    """G = P P^T with rows L2-normalised (similarity-preserving KD), (batch, batch)."""
    return F.normalize(p @ p.T, p=2, dim=1)


def token_relation(h: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """softmax(H_r H_r^T / sqrt(d / R)) over keys per relation head r; (batch, R, N, N)."""
    if h.dim() == 2:
        raise ValueError("a token relation needs (batch, tokens, width) states; got (batch, width)")
    batch, n, d = h.shape
    if d % heads:
        raise ValueError(f"relation_heads={heads} does not divide the width {d}")
    hr = h.reshape(batch, n, heads, d // heads).transpose(1, 2)
    scores = hr @ hr.transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


class RelationTerm(TappedTerm):
    """Match relations between layers (fsp), examples (sample) or tokens (token); see the module docstring."""

    def __init__(
        self,
        weight: float = 1.0,
        variant: Literal["fsp", "sample", "token"] = "sample",
        student_layers: str | list[str] | None = None,
        teacher_layers: str | list[str] | None = None,
        layer_map: str | list[list[Any]] = "uniform",
        path: str = "",
        teacher_path: str | None = None,
        relation_heads: int = 1,
        name: str = "relation",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: unknown value '{variant}'; valid choices: {', '.join(VARIANTS)}")
        if relation_heads < 1:
            raise ValueError(f"relation_heads must be >= 1, got {relation_heads}")
        self.name = name
        self.weight = weight
        self.variant = variant
        self.relation_heads = relation_heads
        self.requires_teacher = True
        self.taps = LayerTaps(student_layers, teacher_layers,
                              layer_map if isinstance(layer_map, str) else [list(p) for p in layer_map],
                              path, teacher_path)

    def setup(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Resolve the layer map against the models; fsp needs two mapped layers at least."""
        pairs = self._setup_taps(student, teacher)
        if self.variant == "fsp" and len(pairs) < 2:
            raise ValueError(f"knowledge term '{self.name}': the fsp relation needs at least two mapped layers, "
                             f"got {len(pairs)} (layer_map: uniform or an explicit list)")

    def count_units(self, batch: dict[str, Any], task: Any) -> float | None:
        """What the loss averages over: examples (fsp), unpadded positions (token); None for sample.

        fsp is a mean over per-example matrices; token a mean over unpadded query rows (None,
        the task's target count, without a 2-D attention mask). sample compares every pair of
        the batch's examples, a loss no split of the batch reproduces: it keeps the target count.
        """
        if self.variant == "fsp":
            return batch_examples(batch)
        if self.variant == "token":
            return mask_units(batch)
        return None

    def _states(self, view: StepView) -> list[tuple[Tensor, Tensor]]:
        out = []
        for pair in self.taps.pairs:
            s = upcast(hidden_tensor(self.taps.values(view.student_captured, pair, "student", self.name),
                              f"student '{pair.student}'"))
            t = upcast(hidden_tensor(self.taps.values(view.teacher_captured, pair, "teacher", self.name),
                              f"teacher '{pair.teacher}'")).to(s.dtype)
            out.append((s, t))
        return out

    def loss(self, view: StepView) -> Tensor:
        if not self.taps.pairs:
            raise RuntimeError(f"knowledge term '{self.name}' was not set up with the models (Distiller does this)")
        states = self._states(view)
        mask = position_mask(view.batch, states[0][0])
        parts: list[Tensor] = []
        if self.variant == "fsp":
            for (s_a, t_a), (s_b, t_b) in zip(states, states[1:]):
                if s_a.shape[-1] != t_a.shape[-1] or s_b.shape[-1] != t_b.shape[-1]:
                    raise ValueError(f"knowledge term '{self.name}': the fsp relation needs equal student and "
                                     f"teacher widths, got {s_a.shape[-1]} vs {t_a.shape[-1]}; use variant sample "
                                     "or token")
                parts.append((fsp_matrix(s_a, s_b, mask) - fsp_matrix(t_a, t_b, mask)).pow(2).mean())
        elif self.variant == "sample":
            for s, t in states:
                parts.append((sample_relation(pooled(s, mask)) - sample_relation(pooled(t, mask))).pow(2).mean())
        else:
            for s, t in states:
                rel_s = token_relation(s, self.relation_heads, mask)
                rel_t = token_relation(t, self.relation_heads, mask)
                parts.append(attention_distance(rel_s, rel_t, "kl", mask))
        return torch.stack(parts).mean()
