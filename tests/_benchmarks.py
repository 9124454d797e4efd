"""The benchmark scripts (benchmarks/<study>/<script>.py, not an installed package), loaded as modules for tests."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))  # the benchmark harness: `import harness`


def load_benchmark(script: str) -> ModuleType:
    """A fresh module from `benchmarks/<script>`, e.g. "translation/bench.py" (the harness's own loader)."""
    from harness.reproduce import load_study

    return load_study(script)
