"""Why a run stops on its own: a loss or a metric that is not finite, or a checkpoint of another world size."""

from __future__ import annotations

import math


class NonFiniteError(RuntimeError):
    """A loss or a validation metric became NaN or infinite; the run stops rather than go on with garbage."""

    step: int


class NonFiniteLossError(NonFiniteError):
    """A training loss became NaN or infinite (on any process) at an optimizer step."""

    def __init__(self, step: int, total: float, parts: dict[str, float], mixed_precision: str = "no") -> None:
        self.step = step
        detail = ", ".join(f"{k}={v:.6g}" for k, v in parts.items())
        hint = "Lower the learning rate or check the data for NaN/inf"
        if mixed_precision != "no":
            hint += f", or use mixed_precision='no' to see whether {mixed_precision} overflows"
        super().__init__(f"loss is {total} at step {step} ({detail}); stopping. {hint}.")


class NonFiniteMetricError(NonFiniteError):
    """A validation metric became NaN or infinite: no checkpoint can be judged best by it."""

    def __init__(self, step: int, metrics: dict[str, float]) -> None:
        self.step = step
        bad = ", ".join(f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v))
        super().__init__(
            f"validation metrics are not finite at step {step} ({bad}); stopping. The model's outputs "
            "overflowed (lower the learning rate) or the validation data holds NaN/inf."
        )


class WorldSizeError(RuntimeError):
    """A checkpoint written by N processes is resumed by M != N processes."""
