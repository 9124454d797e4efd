"""Reproduce the committed benchmark tables and aggregates from their committed unit results (see
benchmarks/harness/reproduce.py):

    python benchmarks/reproduce.py [translation|selection|multihop|causal ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness.reproduce import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
