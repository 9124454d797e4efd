"""Attention maps as knowledge: student attention distributions learn the mapped teacher's.

For Hugging Face BERT-style encoders the maps are the second item of the self-attention
module's output ("<layer>.attention.self"), which transformers returns only under
`attn_implementation="eager"` (under "sdpa" it is None, and this term says so). For plain
modules, point `path` at any module whose output holds a (batch, heads, queries, keys) or
(batch, queries, keys) tensor of attention probabilities.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from ktransfer.knowledge.base import StepView, mask_units
from ktransfer.knowledge.feature import position_mask, upcast
from ktransfer.knowledge.layer_map import LayerMapError, LayerTaps, TappedTerm

EPS = 1e-12


def attention_tensor(value: Any, where: str) -> Tensor:
    """The attention-probability tensor in a captured value, as (batch, heads, queries, keys)."""
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    tensors = [x for x in items if isinstance(x, Tensor)]
    found = next((x for x in tensors if x.dim() == 4), None)
    if found is None:
        found = next((x for x in tensors if x.dim() == 3 and x.shape[-1] == x.shape[-2]), None)
        if found is not None:
            found = found.unsqueeze(1)
    if found is None:
        hint = (" (a Hugging Face model returns them only when loaded with attn_implementation='eager')"
                if any(x is None for x in items) else "")
        raise LayerMapError(f"{where} gives no attention maps (batch, heads, queries, keys){hint}")
    return found


def attention_distance(student: Tensor, teacher: Tensor, loss: str, query_mask: Tensor | None = None) -> Tensor:
    """Distance between attention maps (batch, heads, queries, keys), mean over batch, heads and queries.

    kl: sum_k t_k (log t_k - log s_k) per query row, i.e. KL(teacher || student), with 0 log 0 = 0;
    mse: mean over keys of (s_k - t_k)^2 per row. Rows of padded queries (`query_mask` False) are left out.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student attention {tuple(student.shape)} and teacher attention {tuple(teacher.shape)} differ")
    if loss == "kl":
        t_log = torch.where(teacher > 0, teacher.clamp_min(EPS).log(), torch.zeros_like(teacher))
        rows = (teacher * (t_log - student.clamp_min(EPS).log())).sum(-1)
    else:
        rows = (student - teacher).pow(2).mean(-1)
    rows = rows.mean(1)  # over heads -> (batch, queries)
    if query_mask is None:
        return rows.mean()
    return rows[query_mask].mean()


class AttentionTerm(TappedTerm):
    """Match attention maps of mapped layers: mean over layer pairs of KL(teacher || student) or MSE.

    Head counts may differ: then each side's maps are averaged over its heads first
    (`heads: mean` forces this also for equal counts). Query and key lengths must agree
    (same tokenisation).
    """

    def __init__(
        self,
        weight: float = 1.0,
        loss: Literal["kl", "mse"] = "kl",
        student_layers: str | list[str] | None = None,
        teacher_layers: str | list[str] | None = None,
        layer_map: str | list[list[Any]] = "uniform",
        path: str = "attention.self",
        teacher_path: str | None = None,
        heads: Literal["auto", "mean"] = "auto",
        name: str = "attention",
    ) -> None:
        super().__init__()
        if loss not in ("kl", "mse"):
            raise ValueError(f"loss: unknown value '{loss}'; valid choices: kl, mse")
        if heads not in ("auto", "mean"):
            raise ValueError(f"heads: unknown value '{heads}'; valid choices: auto, mean")
        self.name = name
        self.weight = weight
        self.loss_kind = loss
        self.heads = heads
        self.requires_teacher = True
        self.taps = LayerTaps(student_layers, teacher_layers,
                              layer_map if isinstance(layer_map, str) else [list(p) for p in layer_map],
                              path, teacher_path)

    def setup(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Resolve the layer map against the models."""
        self._setup_taps(student, teacher)

    def count_units(self, batch: dict[str, Any], task: Any) -> float | None:
        """The batch's unpadded positions (query rows), the loss's denominator; None without a 2-D attention mask."""
        return mask_units(batch)

    def loss(self, view: StepView) -> Tensor:
        if not self.taps.pairs:
            raise RuntimeError(f"knowledge term '{self.name}' was not set up with the models (Distiller does this)")
        total: Tensor | None = None
        for pair in self.taps.pairs:
            s = upcast(attention_tensor(self.taps.values(view.student_captured, pair, "student", self.name),
                                 f"student '{pair.student}'"))
            t = upcast(attention_tensor(self.taps.values(view.teacher_captured, pair, "teacher", self.name),
                                 f"teacher '{pair.teacher}'")).to(s.dtype)
            if self.heads == "mean" or s.shape[1] != t.shape[1]:
                s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
            query_mask = position_mask(view.batch, s[:, 0])  # (batch, queries) from the attention mask
            d = attention_distance(s, t, self.loss_kind, query_mask)
            total = d if total is None else total + d
        assert total is not None
        return total / len(self.taps.pairs)
