"""Named factories whose keyword arguments double as the config schema.

Models, datasets, knowledge terms and selectors are each registered here under a name. The
factory's signature is the list of valid config keys for that name, so a misspelt key is
reported with the keys that would have been accepted, without a second schema to keep in sync.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Generic, TypeVar, get_args, get_origin

from ktransfer.errors import ConfigError, suggest, unknown_key
from ktransfer.schema import check_value

__all__ = ["ConfigError", "LocalPath", "Registry", "suggest", "unknown_key"]

T = TypeVar("T")


class _PathMarker:
    """Metadata of `LocalPath`: the argument names a file or directory on this machine."""


# Annotate a factory argument with `LocalPath` and a relative value given in a config file is
# taken relative to that file's directory and stored as an absolute path (see RunConfig).
LocalPath = Annotated[str, _PathMarker()]


class _SourceMarker:
    """Metadata of `ModelSource` / `DatasetSource`: a local path or a Hugging Face hub id (`ktransfer.sources`)."""

    def __init__(self, repo_type: str) -> None:
        self.repo_type = repo_type


# A value that exists as a local path (relative to the config file) is stored absolute; any other value
# shaped like a hub id (`org/name`) is kept as the id, which the builder reads from the Hugging Face cache.
ModelSource = Annotated[str, _SourceMarker("model")]
DatasetSource = Annotated[str, _SourceMarker("dataset")]


def _source_type(tp: Any) -> str | None:
    """The repository type of a `ModelSource` / `DatasetSource` hint (alone or in a union), else None."""
    if get_origin(tp) is Annotated:
        return next((m.repo_type for m in get_args(tp)[1:] if isinstance(m, _SourceMarker)), None)
    if get_origin(tp) in (typing.Union, types.UnionType):
        return next((t for t in map(_source_type, get_args(tp)) if t), None)
    return None


def _is_path(tp: Any) -> bool:
    """Whether a type hint is `LocalPath`, alone or in a union (`LocalPath | None`)."""
    if get_origin(tp) is Annotated:
        return any(isinstance(m, _PathMarker) for m in get_args(tp)[1:])
    return get_origin(tp) in (typing.Union, types.UnionType) and any(_is_path(a) for a in get_args(tp))


class Registry(Generic[T]):
    """A name -> factory map; `build` checks the keyword arguments against the signature."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._factories[name] = factory
            return factory

        return wrap

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str, where: str = "") -> Callable[..., T]:
        if name not in self._factories:
            at = f"{where}: " if where else ""
            raise ConfigError(
                f"{at}unknown {self.kind} '{name}'{suggest(name, self.names())}; "
                f"valid choices: {', '.join(self.names())}"
            )
        return self._factories[name]

    def keys(self, name: str, where: str = "") -> list[str]:
        """The keyword arguments the factory `name` accepts."""
        params = inspect.signature(self.get(name, where)).parameters.values()
        return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def path_keys(self, name: str) -> list[str]:
        """The arguments of factory `name` annotated `LocalPath` (none for an unknown name)."""
        factory = self._factories.get(name)
        if factory is None:
            return []
        try:
            hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory,
                                          include_extras=True)
        except (TypeError, NameError):
            return []
        return [key for key, tp in hints.items() if _is_path(tp)]

    def source_keys(self, name: str) -> dict[str, str]:
        """The arguments of factory `name` typed `ModelSource` / `DatasetSource`, with their repository type."""
        factory = self._factories.get(name)
        if factory is None:
            return {}
        try:
            hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory,
                                          include_extras=True)
        except (TypeError, NameError):
            return {}
        return {key: kind for key, tp in hints.items() if (kind := _source_type(tp))}

    def check(self, name: str, kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Raise ConfigError naming any unknown key or ill-typed value; return the values, typed."""
        valid = self.keys(name, where)
        factory = self.get(name, where)
        try:
            hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
        except (TypeError, NameError):
            hints = {}
        checked = {}
        for key, value in kwargs.items():
            if key not in valid:
                raise unknown_key(where, key, valid, f" for {self.kind} '{name}'")
            checked[key] = check_value(value, hints[key], f"{where}.{key}") if key in hints else value
        return checked

    def build(self, name: str, kwargs: Mapping[str, Any], where: str = "") -> T:
        checked = self.check(name, kwargs, where or self.kind)
        try:
            return self.get(name, where)(**checked)
        except (ValueError, TypeError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{where or self.kind}: {e}") from e
