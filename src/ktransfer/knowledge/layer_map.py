"""Which student layer learns from which teacher layer, resolved against the models themselves.

Knowledge terms that read intermediate layers (feature, relation, attention) name the layers of
each model in one of three ways:

* ``None`` (auto): the children of the model's first ``nn.ModuleList`` with at least one entry,
  e.g. ``bert.encoder.layer.0 .. N-1`` for a Hugging Face BERT;
* a string: a container module whose children are the layers (``"bert.encoder.layer"``);
* a list of module names, used as given.

A layer map then pairs them: ``"uniform"`` maps student layer i (0-based, of S) to teacher layer
``ceil((i + 1) * T / S) - 1`` (of T), so the last layers meet; ``"last"`` pairs the last layers
only; an explicit list ``[[s, t], ...]`` pairs student index s with teacher index t (negative
indices count from the end; module names are accepted in place of indices).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from torch import nn

from ktransfer.capture import CaptureError, _resolve, list_modules, parse_spec

LayerSpec = Union[str, list[str], None]
LayerMapSpec = Union[str, list[list[Any]]]
LAYER_MAPS: tuple[str, ...] = ("uniform", "last")


class LayerMapError(ValueError):
    """A layer name or index that the model does not have, or an unusable layer map."""


def _layer_listing(model: nn.Module, limit: int = 60) -> str:
    names = [name for name, _ in list_modules(model) if name]
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{type(model).__name__} has modules: {shown}{more}"


def find_layers(model: nn.Module, spec: LayerSpec, who: str) -> list[str]:
    """The ordered layer names of `model` described by `spec` (see the module docstring)."""
    if isinstance(spec, list):
        for name in spec:
            try:
                _resolve(model, name)
            except CaptureError:
                raise LayerMapError(f"{who} layer '{name}' does not exist; {_layer_listing(model)}") from None
        if not spec:
            raise LayerMapError(f"{who} layers: the list is empty")
        return list(spec)
    if isinstance(spec, str):
        try:
            container = _resolve(model, spec)
        except CaptureError:
            raise LayerMapError(f"{who} layers '{spec}' does not exist; {_layer_listing(model)}") from None
        children = [f"{spec}.{child}" if spec else child for child, _ in container.named_children()]
        if not children:
            raise LayerMapError(f"{who} layers '{spec}' has no child modules to use as layers; {_layer_listing(model)}")
        return children
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return [f"{name}.{i}" if name else str(i) for i in range(len(module))]
    raise LayerMapError(
        f"the {who} does not expose hidden states: it has no nn.ModuleList of layers to find on its own. "
        f"Name its layers ({who}_layers: a container module or a list of module names); {_layer_listing(model)}"
    )


@dataclass(frozen=True)
class LayerPair:
    """One student layer paired with one teacher layer, by name and by index in each list."""

    student: str
    teacher: str
    student_index: int
    teacher_index: int


def _index(item: Any, layers: Sequence[str], who: str, model: nn.Module | None) -> int:
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise LayerMapError(f"layer_map: {who} entry {item!r} must be a layer index or a layer name")
    if isinstance(item, str):
        if item in layers:
            return layers.index(item)
        listing = _layer_listing(model) if model is not None else ""
        raise LayerMapError(
            f"layer_map: {who} layer '{item}' does not exist; {who} layers are: {', '.join(layers)}"
            + (f". {listing}" if listing else "")
        )
    n = len(layers)
    if not -n <= item < n:
        raise LayerMapError(
            f"layer_map: {who} layer index {item} does not exist; the {who} has {n} layers: {', '.join(layers)}"
        )
    return item % n


def map_layers(student_layers: Sequence[str], teacher_layers: Sequence[str], layer_map: LayerMapSpec,
               student: nn.Module | None = None, teacher: nn.Module | None = None) -> list[LayerPair]:
    """Pair student and teacher layers by `layer_map` ("uniform", "last" or [[s, t], ...])."""
    s_n, t_n = len(student_layers), len(teacher_layers)
    if isinstance(layer_map, str):
        if layer_map == "last":
            pairs = [(s_n - 1, t_n - 1)]
        elif layer_map == "uniform":
            pairs = [(i, max(0, math.ceil((i + 1) * t_n / s_n) - 1)) for i in range(s_n)]
        else:
            raise LayerMapError(f"layer_map: unknown value '{layer_map}'; valid choices: uniform, last, or [[s, t], ...]")
    else:
        if not layer_map:
            raise LayerMapError("layer_map: the explicit list is empty")
        pairs = []
        for entry in layer_map:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise LayerMapError(f"layer_map: each entry must be a [student, teacher] pair, got {entry!r}")
            pairs.append((_index(entry[0], student_layers, "student", student),
                          _index(entry[1], teacher_layers, "teacher", teacher)))
    return [LayerPair(student_layers[s], teacher_layers[t], s, t) for s, t in pairs]


def check_layer_map(layer_map: Any) -> None:
    """Validate the shape of a layer map from a config (models are not needed for this)."""
    if isinstance(layer_map, str):
        if layer_map not in LAYER_MAPS:
            raise LayerMapError(f"layer_map: unknown value '{layer_map}'; valid choices: uniform, last, or [[s, t], ...]")
        return
    if not isinstance(layer_map, (list, tuple)) or not layer_map:
        raise LayerMapError(f"layer_map: expected uniform, last or a non-empty list of [s, t] pairs, got {layer_map!r}")
    for entry in layer_map:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise LayerMapError(f"layer_map: each entry must be a [student, teacher] pair, got {entry!r}")


def infer_width(model: nn.Module, layer: str) -> int | None:
    """The width of a layer's output, when the model or the layer says it.

    Hugging Face models: `config.hidden_size`. Plain modules: the layer's (or its last
    sub-module's) `out_features`, `out_channels`, `normalized_shape` or `num_features`.
    Returns None when none of these is found.
    """
    module = _resolve(model, layer)
    for candidate in [module, *reversed([m for _, m in module.named_modules()])]:
        for attr in ("out_features", "out_channels", "num_features"):
            value = getattr(candidate, attr, None)
            if isinstance(value, int):
                return value
        shape = getattr(candidate, "normalized_shape", None)
        if isinstance(shape, tuple) and shape:
            return int(shape[-1])
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None)
    return int(hidden) if isinstance(hidden, int) else None


def _suffixed(layer: str, path: str) -> str:
    """`layer` + relative `path` inside it ("attention.self:output"); "" is the layer itself."""
    if not path:
        return layer
    module, _, kind = path.partition(":")
    name = f"{layer}.{module}" if module else layer
    return f"{name}:{kind}" if kind else name


class LayerTaps:
    """The layer pairs of one term and the capture specs that read them (composed into terms).

    `path` / `teacher_path` name a module inside each layer whose output (or ":input") holds
    the value to read; "" reads the layer's own output.
    """

    def __init__(self, student_layers: LayerSpec, teacher_layers: LayerSpec, layer_map: LayerMapSpec,
                 path: str = "", teacher_path: str | None = None) -> None:
        check_layer_map(layer_map)
        self.student_layers = student_layers
        self.teacher_layers = teacher_layers
        self.layer_map = layer_map
        self.path = path
        self.teacher_path = path if teacher_path is None else teacher_path
        self.pairs: list[LayerPair] = []

    def setup(self, student: nn.Module, teacher: nn.Module, term: str) -> list[LayerPair]:
        """Resolve the layers against the models and pair them; the error lists a model's layers."""
        s_layers = find_layers(student, self.student_layers, "student")
        t_layers = find_layers(teacher, self.teacher_layers, "teacher")
        try:
            self.pairs = map_layers(s_layers, t_layers, self.layer_map, student, teacher)
            for pair in self.pairs:
                _resolve(student, _suffixed(pair.student, self.path).split(":")[0])
                _resolve(teacher, _suffixed(pair.teacher, self.teacher_path).split(":")[0])
        except (LayerMapError, CaptureError) as e:
            raise LayerMapError(f"knowledge term '{term}': {e}") from None
        return self.pairs

    @property
    def student_specs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_suffixed(p.student, self.path) for p in self.pairs))

    @property
    def teacher_specs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_suffixed(p.teacher, self.teacher_path) for p in self.pairs))

    def values(self, captured: dict[str, Any], pair: LayerPair, side: str, term: str) -> Any:
        """The captured value of `pair`'s student or teacher side."""
        layer, path = (pair.student, self.path) if side == "student" else (pair.teacher, self.teacher_path)
        key = parse_spec(_suffixed(layer, path)).key
        if key not in captured:
            raise LayerMapError(
                f"knowledge term '{term}': nothing was captured at {side} '{key}' (the module did not run); "
                f"captured: {sorted(captured)}"
            )
        return captured[key]


class TappedTerm(nn.Module):
    """Plumbing shared by the terms that read layers through a `LayerTaps` (feature, relation, attention).

    Subclasses set `self.name` and `self.taps`; the engine reads the capture specs from here and
    calls `setup` with the models before training.
    """

    name: str
    taps: LayerTaps

    @property
    def student_modules(self) -> tuple[str, ...]:
        return self.taps.student_specs

    @property
    def teacher_modules(self) -> tuple[str, ...]:
        return self.taps.teacher_specs

    def _setup_taps(self, student: nn.Module, teacher: nn.Module | None) -> list[LayerPair]:
        """Resolve the layer map against the models (every tapped term needs a teacher)."""
        if teacher is None:
            raise ValueError(f"knowledge term '{self.name}' needs a teacher (or a teacher output store holding the "
                             "teacher's hidden states or attention maps)")
        return self.taps.setup(student, teacher, self.name)
