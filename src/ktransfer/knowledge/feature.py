"""Hidden states as knowledge: student layers learn to match mapped teacher layers.

The term is an `nn.Module`: where widths differ it owns one learned linear projection per layer
pair (student width -> teacher width), which the engine trains with the student's optimizer and
saves with the student (`terms.safetensors`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ktransfer.capture import CaptureError, first_tensor
from ktransfer.knowledge.base import StepView, mask_units
from ktransfer.knowledge.layer_map import LayerMapError, LayerMapSpec, LayerSpec, LayerTaps, TappedTerm, _suffixed, infer_width


def hidden_tensor(value: Any, where: str) -> Tensor:
    """The hidden-state tensor of a captured layer output (the first tensor of a tuple / ModelOutput)."""
    try:
        tensor = first_tensor(value)
    except CaptureError:
        raise LayerMapError(f"{where} does not expose hidden states: its output holds no tensor") from None
    if tensor.dim() < 2 or not tensor.is_floating_point():
        raise LayerMapError(
            f"{where} does not expose hidden states: expected a float tensor (batch, ..., width), "
            f"got {tuple(tensor.shape)} {tensor.dtype}"
        )
    return tensor


def upcast(x: Tensor) -> Tensor:
    """Half-precision values in float32 for the loss; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def position_mask(batch: dict[str, Any], hidden: Tensor) -> Tensor | None:
    """The batch's attention mask as bool (batch, tokens) when it lines up with `hidden`'s positions."""
    mask = batch.get("attention_mask")
    if hidden.dim() == 3 and isinstance(mask, Tensor) and mask.shape == hidden.shape[:2]:
        return mask.bool()
    return None


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` (batch, tokens) over unmasked positions, or over all entries without a mask."""
    if mask is None:
        return values.mean()
    return values[mask].mean()


def feature_distance(student: Tensor, teacher: Tensor, loss: str, mask: Tensor | None = None) -> Tensor:
    """MSE: mean over positions and width of (s - t)^2; cosine: mean over positions of 1 - cos(s, t)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} differ")
    if loss == "mse":
        return masked_mean((student - teacher).pow(2).mean(-1), mask)
    return masked_mean(1.0 - F.cosine_similarity(student, teacher, dim=-1), mask)


class FeatureTerm(TappedTerm):
    """Match the hidden states of mapped layers: mean over pairs of MSE or (1 - cosine).

    With widths d_s != d_t (or `projection: always`), the student's states go through a learned
    linear map W_k in R^{d_t x d_s} per pair k first: loss = mean_k dist(W_k h_s^k, h_t^k).
    Positions where the batch's `attention_mask` is 0 are left out. Layers: see `layer_map`.
    Widths are read from the models (`config.hidden_size`, a layer's `out_features`, ...);
    give `student_width` / `teacher_width` where they cannot be.
    """

    def __init__(
        self,
        weight: float = 1.0,
        loss: Literal["mse", "cosine"] = "mse",
        student_layers: str | list[str] | None = None,
        teacher_layers: str | list[str] | None = None,
        layer_map: str | list[list[Any]] = "uniform",
        path: str = "",
        teacher_path: str | None = None,
        student_width: int | None = None,
        teacher_width: int | None = None,
        projection: Literal["auto", "always", "none"] = "auto",
        name: str = "feature",
    ) -> None:
        super().__init__()
        if loss not in ("mse", "cosine"):
            raise ValueError(f"loss: unknown value '{loss}'; valid choices: mse, cosine")
        if projection not in ("auto", "always", "none"):
            raise ValueError(f"projection: unknown value '{projection}'; valid choices: auto, always, none")
        self.name = name
        self.weight = weight
        self.loss_kind = loss
        self.projection = projection
        self.student_width = student_width
        self.teacher_width = teacher_width
        self.requires_teacher = True
        self.taps = LayerTaps(student_layers, teacher_layers, _as_map(layer_map), path, teacher_path)
        self.projections = nn.ModuleList()
        self._uses_projection = False

    def setup(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Resolve the layer map against the models and create the projections widths require."""
        pairs = self._setup_taps(student, teacher)
        s_width = self.student_width or _width(student, _suffixed(pairs[0].student, self.taps.path), "student", self.name)
        t_width = self.teacher_width or _width(teacher, _suffixed(pairs[0].teacher, self.taps.teacher_path), "teacher",
                                               self.name)
        if self.projection == "none" and s_width != t_width:
            raise ValueError(f"knowledge term '{self.name}': widths differ ({s_width} vs {t_width}) and projection is 'none'")
        self._uses_projection = self.projection == "always" or (self.projection == "auto" and s_width != t_width)
        if self._uses_projection and len(self.projections) != len(pairs):
            self.projections = nn.ModuleList(nn.Linear(s_width, t_width) for _ in pairs)

    def count_units(self, batch: dict[str, Any], task: Any) -> float | None:
        """The batch's unpadded positions: the loss is a mean over them when the layers' states are (batch, tokens, width).

        None (the task's target count) without a 2-D attention mask. A layer whose output is one
        vector per example averages over examples instead, which this count does not see.
        """
        return mask_units(batch)

    def loss(self, view: StepView) -> Tensor:
        if not self.taps.pairs:
            raise RuntimeError(f"knowledge term '{self.name}' was not set up with the models (Distiller does this)")
        total: Tensor | None = None
        for k, pair in enumerate(self.taps.pairs):
            s = hidden_tensor(self.taps.values(view.student_captured, pair, "student", self.name),
                              f"student layer '{pair.student}'")
            t = hidden_tensor(self.taps.values(view.teacher_captured, pair, "teacher", self.name),
                              f"teacher layer '{pair.teacher}'")
            if self._uses_projection:
                projection = self.projections[k]
                s = projection(s.to(projection.weight.dtype))
            d = feature_distance(upcast(s), upcast(t).to(upcast(s).dtype), self.loss_kind, position_mask(view.batch, s))
            total = d if total is None else total + d
        assert total is not None
        return total / len(self.taps.pairs)


def _as_map(layer_map: LayerMapSpec) -> LayerMapSpec:
    return layer_map if isinstance(layer_map, str) else [list(p) for p in layer_map]


def _width(model: nn.Module, spec: str, side: str, term: str) -> int:
    layer = spec.split(":")[0]
    width = infer_width(model, layer)
    if width is None:
        raise ValueError(f"knowledge term '{term}': cannot tell the width of {side} layer '{layer}'; set {side}_width")
    return width


__all__ = ["FeatureTerm", "feature_distance", "hidden_tensor", "LayerSpec"]
