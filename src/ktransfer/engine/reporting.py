"""What a run reports as it goes: its set-up, averaged training losses and weights, and tracker records.

The loop adds each step's loss, term values and weights here; every `log_every` steps their
means go to metrics.jsonl, the progress bar and the trackers (`train.report_to`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ktransfer.engine.configs import OptimConfig, ScheduleConfig, TrainConfig
from ktransfer.engine.distributed import sum_over_processes
from ktransfer.engine.state import TrainState
from ktransfer.runlog import MetricsLog
from ktransfer.schema import to_dict
from ktransfer.selection import Selector


class ReportingMixin:
    """Logging of a `Distiller` (which provides the attributes annotated here)."""

    config: TrainConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    state: TrainState
    selector: Selector
    terms: list[Any]
    run_dir: Path | None
    log: MetricsLog | None
    accelerator: Any

    def _run_record(self, accelerator: Any) -> dict[str, Any]:
        """What the log records about the run's set-up: processes and batching."""
        cfg = self.config
        world = accelerator.num_processes
        return {"split": "setup", "step": self.state.step, "world_size": world, "batch_size": cfg.batch_size,
                "per_process_batch_size": cfg.batch_size // world, "grad_accum_steps": cfg.grad_accum_steps,
                "examples_per_step": cfg.batch_size * cfg.grad_accum_steps, "mixed_precision": cfg.mixed_precision,
                "device": str(accelerator.device)}

    def _start_trackers(self, accelerator: Any) -> None:
        if not self.config.report_to:
            return
        flat: dict[str, Any] = {}
        for section, obj in (("train", self.config), ("optim", self.optim), ("schedule", self.schedule)):
            for key, value in to_dict(obj).items():
                flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
        name = self.run_dir.name if self.run_dir else "ktransfer"
        accelerator.init_trackers(name, config=flat)

    def _accumulate_log(self, total: float, losses: dict[str, float], weights: dict[str, float]) -> None:
        s = self.state.log_sums
        s["loss"] = s.get("loss", 0.0) + total
        for name, value in losses.items():
            s[f"terms/{name}"] = s.get(f"terms/{name}", 0.0) + value
        for name, w in weights.items():
            s[f"weights/{name}"] = s.get(f"weights/{name}", 0.0) + w
        self.state.log_count += 1
        if self.state.first_loss is None:  # the untrained model's loss, for the divergence warning
            self.state.first_loss = total

    def _term_counts(self) -> dict[str, dict[str, int]]:
        """Each term's running counts (its optional `counts`), summed over processes: what it saw since the start.

        Collective under several processes (every process flushes the log at the same steps).
        """
        found = {t.name: t.counts for t in self.terms if isinstance(getattr(t, "counts", None), dict) and t.counts}
        keys = [(name, key) for name, counts in found.items() for key in sorted(counts)]
        if not keys:
            return {}
        world = self.accelerator.num_processes
        totals = sum_over_processes([float(found[name][key]) for name, key in keys], world, self.accelerator.device)
        out: dict[str, dict[str, int]] = {}
        for (name, key), total in zip(keys, totals, strict=True):
            out.setdefault(name, {})[key] = round(total)
        return out

    def _flush_log(self, lr: float, t0: float, bar: Any) -> None:
        n = max(1, self.state.log_count)
        avg = {k: v / n for k, v in self.state.log_sums.items()}
        record: dict[str, Any] = {
            "split": "train", "step": self.state.step, "epoch": self.state.epoch, "lr": lr,
            "loss": avg.pop("loss", math.nan), "elapsed_s": round(time.perf_counter() - t0, 3),
            "terms": {k[6:]: v for k, v in avg.items() if k.startswith("terms/")},
            "weights": {k[8:]: v for k, v in avg.items() if k.startswith("weights/")},
        }
        if hasattr(self.selector, "metrics"):
            record["selector"] = dict(self.selector.metrics())
        counts = self._term_counts()
        if counts:
            record["counts"] = counts
        self.state.log_sums = {}
        self.state.log_count = 0
        self.state.last_loss = record["loss"]
        if self.log and self.accelerator.is_main_process:
            self.log.append(record)
        if self.config.report_to:
            self.accelerator.log({"train/loss": record["loss"], "train/lr": lr,
                                  **{f"train/terms/{k}": v for k, v in record["terms"].items()},
                                  **{f"train/weights/{k}": v for k, v in record["weights"].items()},
                                  **{f"train/counts/{t}/{k}": v for t, c in counts.items() for k, v in c.items()}},
                                 step=self.state.step)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}")
