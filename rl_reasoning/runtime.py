"""Process set-up shared by `train`, `eval` and `distill`: device, CPU threads, seeds, progress bars, recipe imports.

Each entry point calls these instead of repeating them, so the three commands see the same
device, the same thread count and the same importable reward modules for the same recipe.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from .memory import pin_mmap_threshold


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU (accelerate makes the same choice for training)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_cpu(threads: int | None) -> None:
    """On a CPU-only machine: `threads` intra-op threads (default: all cores, divided among the
    processes launched on this machine), and glibc's mmap threshold pinned (memory.py). On a GPU
    machine, nothing: both are CPU-only choices."""
    if torch.cuda.is_available():
        return
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_processes))
    pin_mmap_threshold()  # freed activations go back to the OS


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def quiet_library_progress_bars() -> None:
    """transformers' 'Loading weights' / 'Writing model shards' bars would bury our own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def import_beside(recipe: str | Path | None) -> None:
    """Make modules in the recipe's folder importable by name (e.g. a reward `my_rewards:fn`
    next to `recipes/custom_reward.yaml`)."""
    if recipe is None:
        return
    folder = str(Path(recipe).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
