"""Forward-hook capture of named submodules' inputs and outputs.

Knowledge terms declare which intermediate tensors they need (``"encoder.layer.3"``,
``"transformer.h.0.attn:output"``, ``"classifier:input"``); the distillation engine opens a
:class:`Capture` around each forward pass of the teacher and of the student. Models are never
edited: plain ``torch.nn.Module.register_forward_hook`` hooks are added on enter and removed on
exit, also when the forward raises.

Rules
-----
* **Names** are those of ``model.named_modules()``; ``""`` is the model itself. A model wrapped by
  DDP / accelerate (``wrapper.module``) or ``torch.compile`` (``wrapper._orig_mod``) accepts the
  names of the unwrapped model as well as the prefixed ones.
* **Outputs** are stored as returned by the module (tensor, tuple, ``ModelOutput``, ...), after
  any earlier forward hooks have had their say. Use :func:`first_tensor` to get the main tensor.
* **Inputs** are the positional arguments: the tensor itself when there is exactly one, otherwise
  the tuple of positional arguments. A module called with keyword arguments only stores the
  ``dict`` of those keyword arguments. Keyword arguments given next to positional ones are not
  stored.
* **Repeated calls** (shared modules, loops, several forwards in one context): ``calls[key]`` holds
  the captured value of every call, in call order, since the last :meth:`Capture.clear` (entering
  the context clears); ``outputs[key]`` and ``capture[key]`` give the *last* call.
* **Graph**: by default captured tensors keep their autograd graph so that student features carry
  gradients; ``detach=True`` (teacher) stores detached tensors, recursively through tuples, lists,
  dicts and dataclasses such as HF ``ModelOutput``. ``clone=True`` also copies tensors, which guards
  against later in-place ops (e.g. ``ReLU(inplace=True)``) overwriting a captured value.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "CaptureError",
    "CaptureKind",
    "CaptureSpec",
    "Capture",
    "parse_spec",
    "first_tensor",
    "capture_forward",
    "list_modules",
]

CaptureKind = Literal["output", "input"]
VALID_KINDS: tuple[str, ...] = get_args(CaptureKind)

# Attribute names under which common wrappers keep the wrapped model: DDP / DataParallel /
# accelerate use ``module``; ``torch.compile`` uses ``_orig_mod``.
_WRAPPER_ATTRS: tuple[str, ...] = ("module", "_orig_mod")
_MAX_SUGGESTIONS = 10


class CaptureError(ValueError):
    """Raised for bad capture specs, unknown module names and missing captured values."""


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture: the output or the input of the submodule called ``module``.

    ``module`` is a dotted name as in ``model.named_modules()``; ``""`` is the model itself.
    """

    module: str
    kind: CaptureKind = "output"

    def __post_init__(self) -> None:
        """Reject kinds other than ``"output"`` / ``"input"`` early, with a helpful message."""
        if self.kind not in VALID_KINDS:
            raise CaptureError(
                f"invalid capture kind {self.kind!r} for module {self.module!r}; "
                f"valid kinds: {', '.join(VALID_KINDS)}"
            )

    @property
    def key(self) -> str:
        """Key of this capture in result dicts: ``"<module>:<kind>"``."""
        return f"{self.module}:{self.kind}"

    def __str__(self) -> str:
        return self.key


def parse_spec(s: str | CaptureSpec) -> CaptureSpec:
    """Turn ``"name"`` / ``"name:output"`` / ``"name:input"`` into a :class:`CaptureSpec`.

    A bare name means its output. The kind is the text after the last ``":"``.
    """
    if isinstance(s, CaptureSpec):
        return s
    if not isinstance(s, str):
        raise CaptureError(f"capture spec must be a str or CaptureSpec, got {type(s).__name__}")
    text = s.strip()
    if ":" not in text:
        return CaptureSpec(text, "output")
    module, kind = text.rsplit(":", 1)
    kind = kind.strip().lower()
    if kind not in VALID_KINDS:
        raise CaptureError(
            f"invalid capture kind {kind!r} in spec {s!r}; valid kinds: {', '.join(VALID_KINDS)} "
            f"(write 'module.name' or 'module.name:input')"
        )
    return CaptureSpec(module.strip(), kind)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Walking captured values
# ---------------------------------------------------------------------------------------------


def _is_dataclass_instance(value: Any) -> bool:
    """True for dataclass instances (HF ``ModelOutput`` is one), false for dataclass types."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor inside tuples, lists, dicts and dataclasses; keep the rest.

    Containers are rebuilt with their own type (named tuples, ``ModelOutput`` included), so the
    result has the same structure as ``value``. Unknown objects (e.g. HF caches) are kept as is.
    """
    if isinstance(value, torch.Tensor):
        return fn(value)
    if _is_dataclass_instance(value):
        changes = {
            f.name: _map_tensors(getattr(value, f.name), fn)
            for f in dataclasses.fields(value)
            if f.init
        }
        try:
            return dataclasses.replace(value, **changes)
        except Exception:  # a dataclass whose __init__ rejects its own fields: give up on it
            return value
    if isinstance(value, tuple):
        items = [_map_tensors(v, fn) for v in value]
        if hasattr(value, "_fields"):  # named tuple
            return type(value)(*items)
        return tuple(items) if type(value) is tuple else _rebuild(value, items)
    if isinstance(value, list):
        items = [_map_tensors(v, fn) for v in value]
        return items if type(value) is list else _rebuild(value, items)
    if isinstance(value, Mapping):
        items = {k: _map_tensors(v, fn) for k, v in value.items()}
        return items if type(value) is dict else _rebuild(value, items)
    return value


def _rebuild(original: Any, items: Any) -> Any:
    """Rebuild a container subclass from mapped items, falling back to the builtin type."""
    try:
        return type(original)(items)
    except Exception:
        return items


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


def _clone(t: torch.Tensor) -> torch.Tensor:
    return t.clone()


def _detach_clone(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone()


def _children(value: Any) -> Iterator[tuple[str | None, Any]]:
    """Yield ``(key, child)`` pairs of a container, in order; nothing for leaves."""
    if _is_dataclass_instance(value):
        for f in dataclasses.fields(value):
            yield f.name, getattr(value, f.name, None)
    elif isinstance(value, Mapping):
        yield from ((str(k), v) for k, v in value.items())
    elif isinstance(value, (tuple, list)):
        yield from ((None, v) for v in value)


def _find_tensor(value: Any, depth: int = 0) -> torch.Tensor | None:
    """Depth-first search for the first tensor; ``loss`` fields are only used as a last resort."""
    if isinstance(value, torch.Tensor):
        return value
    if depth > 8:
        return None
    deferred: list[Any] = []
    for key, child in _children(value):
        if key == "loss":  # a ModelOutput's loss is not the "main" tensor (logits are)
            deferred.append(child)
            continue
        found = _find_tensor(child, depth + 1)
        if found is not None:
            return found
    for child in deferred:
        found = _find_tensor(child, depth + 1)
        if found is not None:
            return found
    return None


def _describe(value: Any, depth: int = 0) -> str:
    """Short description of a value's structure, for error messages."""
    name = type(value).__name__
    if depth >= 2:
        return name
    children = list(_children(value))
    if not children and not isinstance(value, (tuple, list, Mapping)):
        return name
    parts = [
        (f"{key}=" if key is not None else "") + _describe(child, depth + 1)
        for key, child in children[:6]
    ]
    if len(children) > 6:
        parts.append("...")
    return f"{name}({', '.join(parts)})"


def first_tensor(value: Any) -> torch.Tensor:
    """The main tensor of a captured value.

    A tensor is returned as is; for a tuple / list the first element holding a tensor (so
    ``(attn_output, attn_weights)`` gives ``attn_output``); for an HF ``ModelOutput`` or other
    dataclass the first tensor field in declaration order (``last_hidden_state``, ``logits``),
    skipping ``loss`` unless nothing else holds a tensor; for a dict the first tensor value.
    Raises :class:`CaptureError` when there is no tensor at all.
    """
    found = _find_tensor(value)
    if found is None:
        raise CaptureError(f"no tensor found in captured value of type {_describe(value)}")
    return found


# ---------------------------------------------------------------------------------------------
# Module resolution
# ---------------------------------------------------------------------------------------------


def _unwrap_chain(model: Any) -> list[tuple[str, nn.Module]]:
    """``[("", model), ("module.", inner), ...]``: the model and the models it wraps, with prefix.

    Follows ``.module`` (DDP, DataParallel, accelerate) and ``._orig_mod`` (``torch.compile``)
    repeatedly; ``model`` itself may be any object with such an attribute.
    """
    chain: list[tuple[str, nn.Module]] = [("", model)] if isinstance(model, nn.Module) else []
    prefix, current = "", model
    seen = {id(model)}
    while True:
        for attr in _WRAPPER_ATTRS:
            inner = getattr(current, attr, None)
            if isinstance(inner, nn.Module) and id(inner) not in seen:
                prefix = f"{prefix}{attr}."
                current = inner
                seen.add(id(inner))
                chain.append((prefix, inner))
                break
        else:
            return chain


def _lookup(model: nn.Module, name: str) -> nn.Module | None:
    """``model.get_submodule(name)`` that returns ``None`` instead of raising."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _resolve(model: Any, name: str) -> nn.Module:
    """Find the submodule called ``name``, also through DDP / compile wrappers; else raise."""
    chain = _unwrap_chain(model)
    if not chain:
        raise CaptureError(
            f"cannot capture from {type(model).__name__}: it is not an nn.Module and wraps none "
            f"(no nn.Module under .module / ._orig_mod)"
        )
    # Exact name first, then the same name inside each wrapped model.
    for _prefix, candidate in chain:
        found = _lookup(candidate, name)
        if found is not None:
            return found
    # A prefixed name ("module.encoder") given for a model that is not (or less) wrapped.
    for attr in _WRAPPER_ATTRS:
        if name.startswith(attr + "."):
            stripped = name[len(attr) + 1 :]
            for _prefix, candidate in chain:
                found = _lookup(candidate, stripped)
                if found is not None:
                    return found
    raise CaptureError(_unknown_name_message(chain, name))


def _unknown_name_message(chain: list[tuple[str, nn.Module]], name: str) -> str:
    """Error text for an unknown module name: close matches and the number of modules."""
    root_prefix, root = chain[0]
    all_names = [n for n, _ in root.named_modules(remove_duplicate=False)]
    candidates: list[str] = list(all_names)
    for prefix, _inner in chain[1:]:
        rel = prefix[len(root_prefix) :]
        candidates.extend(n[len(rel) :] for n in all_names if n.startswith(rel))
    candidates = [c for c in dict.fromkeys(candidates) if c]
    close = difflib.get_close_matches(name, candidates, n=_MAX_SUGGESTIONS, cutoff=0.6)
    msg = f"unknown module name {name!r} in {type(root).__name__} ({len(all_names)} named modules)."
    if close:
        msg += " Closest valid names: " + ", ".join(repr(c) for c in close) + "."
    else:
        top = [n for n, _ in chain[-1][1].named_children()][:_MAX_SUGGESTIONS]
        msg += " Top-level children: " + ", ".join(repr(c) for c in top) + "."
    msg += " Use ktransfer.capture.list_modules(model) to see all names."
    return msg


def list_modules(model: nn.Module, max_depth: int | None = None) -> list[tuple[str, str]]:
    """``(name, class name)`` of every submodule, to help users pick capture names.

    The model itself comes first as ``""``. ``max_depth`` limits the number of dotted name
    components (0: only the model, 1: its direct children, ...). A module reachable under several
    names is listed under each of them; every listed name is accepted by :class:`Capture`.
    """
    result: list[tuple[str, str]] = []
    for name, module in model.named_modules(remove_duplicate=False):
        depth = 0 if name == "" else name.count(".") + 1
        if max_depth is not None and depth > max_depth:
            continue
        result.append((name, type(module).__name__))
    return result


# ---------------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------------


class Capture:
    """Context manager: registers forward hooks on the named submodules on enter, removes them on
    exit (also on exception).

    ``specs`` are strings (``"encoder.layer.1"``, ``"encoder.layer.1:input"``) or
    :class:`CaptureSpec` objects; names are validated here, before any forward runs. After a
    forward inside the context, ``outputs[key]`` / ``capture[name]`` give the value of the last
    call and ``calls[key]`` the values of every call (see the module docstring for the rules).
    Values stay readable after exit until :meth:`clear` or the next enter.
    """

    def __init__(
        self,
        model: nn.Module,
        specs: Iterable[str | CaptureSpec],
        *,
        detach: bool = False,
        clone: bool = False,
    ) -> None:
        if isinstance(specs, (str, CaptureSpec)):
            specs = [specs]
        self.model = model
        self.detach = detach
        self.clone = clone
        parsed = [parse_spec(s) for s in specs]
        self.specs: tuple[CaptureSpec, ...] = tuple(dict.fromkeys(parsed))
        self._targets: dict[CaptureSpec, nn.Module] = {s: _resolve(model, s.module) for s in self.specs}
        self._calls: dict[str, list[Any]] = {}
        self._handles: list[RemovableHandle] = []
        if detach and clone:
            self._transform: Callable[[torch.Tensor], torch.Tensor] | None = _detach_clone
        elif detach:
            self._transform = _detach
        elif clone:
            self._transform = _clone
        else:
            self._transform = None

    # -- context management -----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the hooks are currently registered."""
        return bool(self._handles)

    def __enter__(self) -> Capture:
        """Clear earlier captures and register one forward hook per spec."""
        if self._handles:
            raise CaptureError("this Capture is already active; use a new Capture to nest")
        self.clear()
        try:
            for spec in self.specs:
                hook = self._make_hook(spec)
                handle = self._targets[spec].register_forward_hook(hook, with_kwargs=True)
                self._handles.append(handle)
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove all hooks; exceptions from the forward propagate."""
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _make_hook(
        self, spec: CaptureSpec
    ) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]:
        """Build the hook storing ``spec``'s value; it never changes the module's output."""
        key = spec.key
        want_input = spec.kind == "input"

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if want_input:
                if len(args) == 1:
                    value: Any = args[0]
                elif args or not kwargs:
                    value = tuple(args)
                else:
                    value = dict(kwargs)
            else:
                value = output
            if self._transform is not None:
                value = _map_tensors(value, self._transform)
            self._calls.setdefault(key, []).append(value)

        return hook

    # -- results ----------------------------------------------------------------------------

    @property
    def keys(self) -> tuple[str, ...]:
        """Keys of the requested captures, in request order."""
        return tuple(s.key for s in self.specs)

    @property
    def outputs(self) -> dict[str, Any]:
        """``key -> captured value of the last call``, for every spec whose module was called.

        Returns a new dict on each access; the values are the captured objects themselves.
        """
        return {key: values[-1] for key, values in self._calls.items() if values}

    @property
    def calls(self) -> dict[str, list[Any]]:
        """``key -> captured values of all calls`` in call order (length > 1 for shared modules)."""
        return {key: list(values) for key, values in self._calls.items()}

    def clear(self) -> None:
        """Drop every captured value so no tensor (or graph) is kept alive by this object."""
        self._calls = {}

    def _normalize_key(self, key: str | CaptureSpec) -> str:
        return parse_spec(key).key

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (str, CaptureSpec)):
            return False
        try:
            return self._normalize_key(key) in self._calls
        except CaptureError:
            return False

    def __getitem__(self, key: str | CaptureSpec) -> Any:
        """Last captured value for ``"name"`` (= ``"name:output"``) or ``"name:kind"``."""
        norm = self._normalize_key(key)
        values = self._calls.get(norm)
        if values:
            return values[-1]
        captured = sorted(self._calls)
        if norm in self.keys:
            raise CaptureError(
                f"{norm!r} was hooked but its module was not called during the forward pass "
                f"(or the capture was cleared); captured: {captured}"
            )
        raise CaptureError(
            f"{norm!r} was not requested from this Capture; requested: {list(self.keys)}; "
            f"captured: {captured}"
        )

    def __repr__(self) -> str:
        return (
            f"Capture({type(self.model).__name__}, specs={list(self.keys)}, detach={self.detach}, "
            f"active={self.active}, captured={sorted(self._calls)})"
        )


def capture_forward(
    model: nn.Module,
    specs: Iterable[str | CaptureSpec],
    forward: Callable[[], Any],
    *,
    detach: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Run ``forward()`` inside a :class:`Capture`; return its result and the last-call values."""
    with Capture(model, specs, detach=detach) as capture:
        out = forward()
    return out, capture.outputs
