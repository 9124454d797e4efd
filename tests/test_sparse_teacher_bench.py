"""The sparse-teacher measurement (benchmarks/sparse_teacher/measure.py) on a small synthetic teacher."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import load_benchmark  # noqa: E402

bench = load_benchmark("sparse_teacher/measure.py")


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


def test_rows_are_exact_at_k_equal_vocabulary_and_the_table_lists_every_cell() -> None:
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(10, 30, generator=gen, dtype=torch.float64) * 3
    students = {"noisy": teacher + torch.randn(10, 30, generator=gen, dtype=torch.float64)}
    rows, top_mass = bench.measure([1, 30], 1.0, teacher, students, chunk=4)
    assert len(rows) == len(bench.DIVERGENCES) * 2 * 2
    assert top_mass[30] == pytest.approx(1.0) and 0 < top_mass[1] < 1
    for row in rows:
        if row["k"] == 30:
            assert row["mean_abs_error"] < 1e-12 and row["grad_cosine"] == pytest.approx(1.0, abs=1e-12)
        elif row["tail"] == "bucket":
            assert row["sparse_mean"] <= row["dense_mean"] + 1e-12
            if row["divergence"] == "backward_kl":
                assert row["mean_gap_bound"] is None
            else:
                assert row["dense_mean"] - row["sparse_mean"] <= row["mean_gap_bound"] + 1e-12
    result = {"rows": rows, "k": [1, 30], "top_k_mass": {str(k): v for k, v in top_mass.items()}, "temperature": 1.0,
              "data": {"target_positions": 10}, "provenance": {"commit": "0123456789" * 4, "dirty": False, "command": "python x.py"}}
    text = bench.table(result)
    assert text.count("| noisy |") == len(bench.DIVERGENCES)
    assert "k=1: " in text and "\\|" in text
    assert "Made by commit 0123456: `python x.py`." in text
