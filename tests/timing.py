"""Checks about time that cannot flake on a slow or busy machine.

- `assert_scales_linearly`: count work instead of timing it against a wall-clock budget: the same
  input scaled x10 must take less than x30 as long, measured in one run (linear work: about x10;
  quadratic: about x100).
- `hang_guard`: a limit far above the normal time (at least 10x what was measured), so that a hang
  fails the test instead of stalling the suite; it is never a performance threshold.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

import pytest


def best_time(fn: Callable, arg, repeats: int = 3) -> float:
    """The least of `repeats` timings of fn(arg), in seconds: noise from other processes only adds time."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return min(times)


def assert_scales_linearly(fn: Callable, make_input: Callable[[int], object], n: int, factor: int = 10,
                           max_ratio: float = 30, min_seconds: float = 0.005, max_n: int = 10**7) -> int:
    """fn(make_input(n * factor)) takes less than `max_ratio` times as long as fn(make_input(n)).

    n doubles first until the small run takes `min_seconds`, so a fixed overhead does not hide a
    quadratic term. Returns the n used."""
    small = best_time(fn, make_input(n))
    while small < min_seconds and n < max_n:
        n *= 2
        small = best_time(fn, make_input(n))
    big = best_time(fn, make_input(n * factor))
    assert big < max_ratio * small, (
        f"not linear: size {n * factor:,} took {big:.4f} s, {big / small:.0f}x the {small:.4f} s of size {n:,} "
        f"(linear work: about {factor}x; allowed: {max_ratio}x)")
    return n


@contextmanager
def hang_guard(seconds: float, what: str):
    """Fail the test when the block runs past `seconds` (SIGALRM; main thread only). A hang guard:
    set it at 10x or more of the block's measured time, and say that time where it is used."""
    assert threading.current_thread() is threading.main_thread(), "hang_guard needs the main thread"

    def expire(signum, frame):
        pytest.fail(f"hang guard: {what} still running after {seconds:g} s (a hang, not slowness: "
                    f"the guard is at least 10x its normal time)", pytrace=False)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
