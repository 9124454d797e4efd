"""Writing a benchmark's outputs: JSON aggregates, Markdown tables and plots, each written aside and swapped in by
rename, so a reader never sees half a file."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

Output = Union[str, Mapping[str, Any], list, Callable[[Path], None]]


def write_json(path: str | Path, data: Any) -> None:
    """`data` as indented JSON with sorted keys (the form of every committed result)."""
    from ktransfer.checkpoint import write_json_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


def write_text(path: str | Path, text: str) -> None:
    from ktransfer.checkpoint import write_text_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """A matplotlib figure as a PNG (closed afterwards)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(outputs: Mapping[Path, Output]) -> list[Path]:
    """Write every output: text for a string, JSON for a dict or list, and a callable draws a plot into its path.
    Returns the paths written."""
    for path, value in outputs.items():
        if isinstance(value, str):
            write_text(path, value)
        elif isinstance(value, (Mapping, list)):
            write_json(path, value)
        elif callable(value):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            value(Path(path))
        else:
            raise TypeError(f"{path}: an output is text, JSON data or a plotting function, got {type(value).__name__}")
    return list(outputs)
