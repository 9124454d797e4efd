"""Leaving the process group at the end of a multi-process run (gloo aborts a process that exits inside one)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import _launch
import pytest

from ktransfer.engine.distributed import leave_process_group

NEVER_ARRIVES = """
import os, time, torch
import ktransfer.engine.distributed as d
torch.distributed.init_process_group("gloo")
d.LEAVING_WAIT_S = 1
if int(os.environ["RANK"]) == 1:
    time.sleep(6)  # busy past rank 0's wait at the end
    d.leave_process_group(wait_for_others=False)
else:
    d.leave_process_group()
# one write per line: two processes share the pipe, and print's separate writes can interleave
os.write(1, f"rank {os.environ['RANK']} in a group: {torch.distributed.is_initialized()}\\n".encode())
"""

LEFT_AT_EXIT = """
import atexit, os, torch
from ktransfer.engine.configs import TrainConfig
from ktransfer.engine.distributed import new_accelerator
# registered first, so it runs last: after the engine's own handler
atexit.register(lambda: os.write(1, f"rank {os.environ['RANK']} in a group at exit: {torch.distributed.is_initialized()}\\n".encode()))
accelerator = new_accelerator(TrainConfig(max_steps=1, batch_size=2), None)
assert accelerator.num_processes == 2 and torch.distributed.is_initialized()
"""


def torchrun(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """`source` run as a script by two processes; both must exit 0."""
    script = tmp_path / "script.py"
    script.write_text(source)
    proc = subprocess.run([*_launch.torchrun(), str(script)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_leaving_without_a_process_group_does_nothing() -> None:
    leave_process_group()
    leave_process_group(wait_for_others=False)


@pytest.mark.slow
def test_a_process_that_does_not_arrive_in_time_does_not_fail_the_others(tmp_path: Path) -> None:
    proc = torchrun(tmp_path, NEVER_ARRIVES)
    assert "not every process arrived at the end within 1 s; leaving anyway" in proc.stderr
    assert proc.stdout.count("in a group: False") == 2


@pytest.mark.slow
def test_a_run_that_never_leaves_is_taken_out_of_the_group_before_the_interpreter_ends(tmp_path: Path) -> None:
    proc = torchrun(tmp_path, LEFT_AT_EXIT)
    assert proc.stdout.count("in a group at exit: False") == 2, proc.stdout
