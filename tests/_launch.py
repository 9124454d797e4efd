"""Launch commands for the multi-process tests.

Each launch gets a rendezvous port of its own (`torchrun --standalone` picks a free one; `accelerate launch`
is given one), so multi-process tests can run side by side under `pytest -n` without meeting on the default
port 29500.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path


def executable(name: str) -> str:
    """The console script `name` of this interpreter's environment."""
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def torchrun(nproc: int = 2) -> list[str]:
    """`torchrun` with `nproc` processes on this machine and a free rendezvous port; append the script and args."""
    return [executable("torchrun"), "--standalone", "--nproc_per_node", str(nproc)]


def free_port() -> int:
    """A TCP port free on localhost now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accelerate_launch(nproc: int = 2) -> list[str]:
    """`accelerate launch` of `nproc` CPU processes (`--multi_gpu` makes it start them) on a free port."""
    return [executable("accelerate"), "launch", "--multi_gpu", "--num_processes", str(nproc),
            "--main_process_port", str(free_port())]
