"""The benchmark scripts (benchmarks/<study>/<script>.py, not an installed package), loaded as modules for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))  # the benchmark harness: `import harness`


def load_benchmark(script: str) -> ModuleType:
    """A fresh module from `benchmarks/<script>`, e.g. "translation/bench.py"."""
    path = BENCHMARKS / script
    spec = importlib.util.spec_from_file_location(f"bench_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
