"""The machine and library versions recorded with every run and benchmark result.

Versions are read from the installed packages' metadata, so recording them imports neither `transformers` nor
`accelerate` (seconds each); only `torch` is imported, for its thread count and the GPU's name.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None where it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Machine and library versions, recorded with every run and benchmark."""
    import torch

    return {
        "python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "transformers": package_version("transformers"), "accelerate": package_version("accelerate"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }
