"""Signs that a run which finished without error probably failed: a rising loss, chance-level accuracy."""

from __future__ import annotations

import math

# The divergence warning compares the first step's loss with the last logged one, in runs this long.
HEALTH_MIN_STEPS = 20


def run_health_warnings(first_loss: float | None, last_loss: float | None, final_metrics: dict[str, float],
                        chance_accuracy: float | None) -> list[str]:
    """Warnings for a run that finished without error but probably failed.

    A training loss that ends well above the first step's (factor 1.5 and by more than 0.1)
    means divergence; a final validation accuracy within 1 point of chance means nothing was learnt.
    """
    warnings = []
    if first_loss is not None and last_loss is not None and math.isfinite(first_loss):
        if last_loss > 1.5 * first_loss and last_loss - first_loss > 0.1:
            warnings.append(
                f"the training loss ended at {last_loss:.4g}, above where it started ({first_loss:.4g}): "
                "training diverged (is the learning rate too high?)"
            )
    accuracy = final_metrics.get("accuracy")
    if chance_accuracy is not None and accuracy is not None and accuracy <= chance_accuracy + 0.01:
        warnings.append(
            f"the final validation accuracy {accuracy:.4f} is at chance level ({chance_accuracy:.4f}, the "
            "majority class's share): the student learnt nothing useful"
        )
    return warnings
