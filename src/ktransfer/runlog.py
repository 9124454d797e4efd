"""Run metrics as JSON lines, and a PNG of the learning curves drawn from them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ktransfer.io import write_text_atomic


class MetricsLog:
    """Append-only JSONL of records `{"step": int, "split": "train"|"val"|..., ...}`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a line cut short by a kill: everything after it is void
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records logged after `step` (used when resuming from a checkpoint at `step`)."""
        records = self.read()
        kept = [r for r in records if r.get("step", 0) <= step]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        if len(kept) == len(records) and self.path.exists() and self.path.read_text(encoding="utf-8") == text:
            return  # nothing to drop: leave the file untouched
        write_text_atomic(self.path, text)


def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training losses (total and per term) and validation metrics against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [r["step"] for r in train]
        ax_loss.plot(steps, [r["loss"] for r in train], label="total (weighted)", lw=2)
        term_names = sorted({k for r in train for k in r.get("terms", {})})
        for name in term_names:
            ax_loss.plot(steps, [r["terms"].get(name, math.nan) for r in train], label=name, lw=1)
        ax_loss.legend()
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    if val:
        steps = [r["step"] for r in val]
        # perplexity is exp(loss): plotted on the same axis it would flatten everything else
        metric_names = sorted({k for r in val for k, v in r.items() if isinstance(v, (int, float))}
                              - {"step", "perplexity"})
        for name in metric_names:
            ax_val.plot(steps, [r.get(name, math.nan) for r in val], marker="o", ms=3, label=name)
        ax_val.legend()
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("validation")
    ax_val.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def plot_weights(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Each knowledge term's weight (as logged: the mean over each log window) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") == "train" and r.get("weights")]
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in train]
    for name in sorted({k for r in train for k in r["weights"]}):
        ax.plot(steps, [r["weights"].get(name, math.nan) for r in train], label=name, lw=1.5)
    if train:
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("knowledge weight")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _save_figure(fig, path)


def _save_figure(fig: Any, path: str | Path) -> Path:
    """Write a figure as PNG atomically (drawn aside, renamed into place) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
