"""What a config may name: every registered component with its parameters (`ktransfer list`).

Each category is a registry (builders, datasets, knowledge terms, selectors; for chain configs
the transfer methods and the model kinds: torch builders and scikit-learn estimators) or the
divergence table; a component is described from its signature and docstring, so the listing
cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, get_origin

from ktransfer.registry import LocalPath

_REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One keyword a component takes: its name, type as written, and default (or required / from the dataset)."""

    name: str
    type: str
    default: Any = _REQUIRED
    from_dataset: str | None = None  # the dataset `info` key that fills it when the config leaves it out

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED and self.from_dataset is None

    def render(self) -> str:
        text = f"{self.name}: {self.type}" if self.type else self.name
        if self.from_dataset is not None:
            return f"{text} = (the dataset's {self.from_dataset})"
        return f"{text} (required)" if self.required else f"{text} = {self.default!r}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        if self.from_dataset is not None:
            out["from_dataset"] = self.from_dataset
        elif not self.required:
            out["default"] = self.default if isinstance(self.default, (int, float, str, bool, type(None))) else repr(self.default)
        return out


@dataclass(frozen=True)
class Component:
    """A registered name, its parameters and the first line of its docstring."""

    name: str
    summary: str
    params: tuple[Param, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "params": [p.to_dict() for p in self.params]}


def _type_text(annotation: Any, resolved: Any) -> str:
    """The type as its author wrote it ('path' for LocalPath)."""
    if get_origin(resolved) is Annotated and resolved == LocalPath:
        return "path"
    if annotation is _REQUIRED:
        return ""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def describe(name: str, factory: Callable[..., Any], keep: Callable[[inspect.Parameter], bool] | None = None,
             from_dataset: dict[str, str] | None = None) -> Component:
    """Describe `factory` (function, class or functools.partial) registered as `name`.

    `keep` selects the parameters to show (default: every keyword parameter); `from_dataset`
    maps parameters that the runner fills from the dataset to the `info` key they come from.
    """
    target = getattr(factory, "func", factory)  # a partial: its function holds the annotations
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target, include_extras=True)
    except (TypeError, NameError):
        hints = {}
    factories = {f.name: f.default_factory for f in dataclasses.fields(factory)
                 if f.default_factory is not dataclasses.MISSING} if dataclasses.is_dataclass(factory) else {}
    params = []
    for p in inspect.signature(factory).parameters.values():
        if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or (keep is not None and not keep(p)):
            continue
        default = factories[p.name]() if p.name in factories else p.default
        params.append(Param(p.name, _type_text(p.annotation, hints.get(p.name)), default,
                            (from_dataset or {}).get(p.name)))
    return Component(name=name, summary=summary(inspect.getdoc(factory) or ""), params=tuple(params))


def summary(doc: str) -> str:
    """A docstring's first line, continued (on one line) up to the line that ends its first sentence, so
    that a summary is never cut mid-sentence; stops at the first blank line."""
    lines: list[str] = []
    for line in doc.strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
        if line.rstrip().endswith("."):
            break
    return " ".join(lines)


@dataclass(frozen=True)
class Category:
    """One kind of component, where a config names it, and how to list its members."""

    name: str
    where: str
    members: Callable[[], list[Component]]


def _registry_members(get: Callable[[], Any], from_dataset: Callable[[], dict[str, str]] | None = None
                      ) -> Callable[[], list[Component]]:
    """Lists a registry's components; `get` imports the registry only when asked (start-up stays light)."""

    def members() -> list[Component]:
        registry = get()
        filled = from_dataset() if from_dataset is not None else None
        return [describe(n, registry.get(n), from_dataset=filled) for n in registry.names()]

    return members


def _builders() -> Any:
    from ktransfer.models import MODELS

    return MODELS


def _datasets() -> Any:
    from ktransfer.data import DATASETS

    return DATASETS


def _knowledge() -> Any:
    from ktransfer.terms import TERMS

    return TERMS


def _selectors() -> Any:
    from ktransfer.selection import SELECTORS

    return SELECTORS


def _divergences() -> list[Component]:
    from ktransfer.divergences import DIVERGENCES
    from ktransfer.knowledge.response import divergence_params

    return [describe(name, fn, keep=lambda p, own=set(divergence_params(name)): p.name in own)
            for name, fn in sorted(DIVERGENCES.items())]


def _model_defaults() -> dict[str, str]:
    from ktransfer.models import DATASET_DEFAULTS

    return dict(DATASET_DEFAULTS)


def _methods() -> Any:
    from ktransfer.hops.methods import TRANSFER_METHODS

    return TRANSFER_METHODS


def _model_kinds() -> list[Component]:
    """A chain's model kinds: the torch builders it accepts (sizes from the data) and the scikit-learn
    estimators (their random_state comes from the chain's seed, so it is not listed)."""
    from ktransfer.hops.models import SKLEARN_MODELS, TORCH_KINDS, model_kinds
    from ktransfer.models import MODELS

    filled = _model_defaults()
    described = {kind: describe(kind, MODELS.get(kind), from_dataset=filled) for kind in TORCH_KINDS}
    described.update({kind: describe(kind, SKLEARN_MODELS.get(kind), keep=lambda p: p.name != "random_state")
                      for kind in SKLEARN_MODELS.names()})
    return [described[kind] for kind in model_kinds()]


CATEGORIES: dict[str, Category] = {
    "divergences": Category("divergences", "knowledge: [{type: response, divergence: NAME, params: {...}}]",
                            _divergences),
    "knowledge": Category("knowledge", "knowledge: [{type: NAME, ...}]", _registry_members(_knowledge)),
    "selectors": Category("selectors", "selector: {type: NAME, ...}", _registry_members(_selectors)),
    "builders": Category("builders", "student / teacher: {builder: NAME, ...}",
                         _registry_members(_builders, _model_defaults)),
    "datasets": Category("datasets", "data: {name: NAME, ...}", _registry_members(_datasets)),
    "methods": Category("methods", "chain config (ktransfer hops): method: {name: NAME, ...}",
                        _registry_members(_methods)),
    "model_kinds": Category("model_kinds", "chain config (ktransfer hops): teacher / student / plan.ladder: "
                                           "{kind: NAME, ...}", _model_kinds),
}


def format_category(category: Category) -> str:
    """A category as text: a heading with where a config names it, then each component and its parameters."""
    lines = [f"{category.name}  ({category.where})"]
    for component in category.members():
        lines.append(f"  {component.name}: {component.summary}" if component.summary else f"  {component.name}")
        lines += [f"      {p.render()}" for p in component.params] or ["      (no parameters)"]
    return "\n".join(lines) + "\n"
