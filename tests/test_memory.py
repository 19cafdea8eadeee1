"""glibc mmap-threshold pinning (memory.py): freed activation-sized blocks go back to the OS."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import sys, torch
from rl_reasoning.memory import pin_mmap_threshold
def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1e3
if sys.argv[1] == 'pin':
    assert pin_mmap_threshold()
big = torch.ones(8 * 2**20); del big  # freeing a 32 MiB block raises glibc's dynamic threshold
base = rss_mb()
keep = []
for _ in range(100):  # the update's pattern: MiB-sized activations freed, small tensors kept
    a = torch.ones(2**19); keep.append(torch.ones(2**10)); del a
print(rss_mb() - base)
"""


def retained_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_pinned_threshold_returns_freed_blocks_to_the_os():
    pinned, default = retained_mb("pin"), retained_mb("default")
    assert pinned < 20  # 100 freed 2 MiB blocks: nothing kept
    assert default - pinned > 100  # glibc's default keeps them (why the trainer pins the threshold)
