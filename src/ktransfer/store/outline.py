"""The teacher's module tree without its weights, so that terms resolve their layers against a store.

Feature, relation and attention terms name teacher layers (``None`` for the first layer list, a
container, or names) and read widths from the model (`ktransfer.knowledge.layer_map`). A store
records the teacher's module names, which of them are layer lists, each module's own width
attributes and the config's ``hidden_size``; :func:`outline_module` rebuilds an empty
``nn.Module`` tree from that, on which the terms' ``setup`` resolves the same layers and widths as on
the teacher itself. The tree has no parameters and is never run.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from torch import nn

WIDTH_ATTRS: tuple[str, ...] = ("out_features", "out_channels", "num_features")


def describe_modules(model: nn.Module) -> dict[str, Any]:
    """The outline of `model`: its submodules in `named_modules` order, layer lists marked, widths kept."""
    modules = []
    for name, module in model.named_modules():
        if not name:
            continue
        entry: dict[str, Any] = {"name": name}
        if isinstance(module, nn.ModuleList):
            entry["list"] = True
        for attr in WIDTH_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, int):
                entry[attr] = value
        shape = getattr(module, "normalized_shape", None)
        if isinstance(shape, tuple) and shape:
            entry["normalized_shape"] = [int(s) for s in shape]
        modules.append(entry)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    return {"model": type(model).__name__, "hidden_size": hidden if isinstance(hidden, int) else None,
            "modules": modules}


class _Node(nn.Module):
    """An empty module standing for one of the teacher's (it has no forward)."""


def outline_module(outline: dict[str, Any]) -> nn.Module:
    """An empty module tree with the teacher's names, layer lists and width attributes."""
    root = _Node()
    nodes: dict[str, nn.Module] = {"": root}
    for entry in outline.get("modules", []):
        name = str(entry["name"])
        parent, _, child = name.rpartition(".")
        node: nn.Module = nn.ModuleList() if entry.get("list") else _Node()
        for attr in WIDTH_ATTRS:
            if attr in entry:
                setattr(node, attr, int(entry[attr]))
        if "normalized_shape" in entry:
            node.normalized_shape = tuple(entry["normalized_shape"])  # type: ignore[assignment]
        if parent not in nodes:  # a parent that named_modules did not list (deduplicated): an empty node
            nodes[parent] = _Node()
        nodes[parent].add_module(child, node)
        nodes[name] = node
    if outline.get("hidden_size") is not None:
        root.config = SimpleNamespace(hidden_size=int(outline["hidden_size"]))  # type: ignore[assignment]
    return root
