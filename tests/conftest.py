"""Test-session settings: the models here are tiny, so one intra-op thread is fastest and keeps
parallel test processes from oversubscribing the cores."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)
