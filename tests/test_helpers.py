"""The test helpers themselves: a missing capability skips or fails (tests/capabilities.py), and the
timing checks fail where they must (tests/timing.py)."""

from __future__ import annotations

import time

import pytest

from tests import capabilities
from tests.capabilities import SANDBOX_SWITCH, require
from tests.timing import assert_scales_linearly, hang_guard


def test_a_missing_capability_skips_or_fails_under_its_switch(monkeypatch):
    monkeypatch.delenv(SANDBOX_SWITCH, raising=False)
    require(True, SANDBOX_SWITCH, "nothing")
    with pytest.raises(pytest.skip.Exception, match="no isolation"):
        require(False, SANDBOX_SWITCH, "no isolation")
    monkeypatch.setenv(SANDBOX_SWITCH, "1")
    with pytest.raises(pytest.fail.Exception, match="no isolation, and RL_REASONING_REQUIRE_SANDBOX=1 requires it"):
        require(False, SANDBOX_SWITCH, "no isolation")
    monkeypatch.setattr(capabilities, "namespaces_available", lambda: False)  # as on a machine without root
    with pytest.raises(pytest.fail.Exception, match="no namespace isolation"):
        capabilities.require_namespaces()


def test_hang_guard_fails_a_hanging_block_and_lets_a_quick_one_pass():
    with hang_guard(5, "a quick block"):
        pass
    with pytest.raises(pytest.fail.Exception, match="hang guard: a sleep still running after 0.2 s"):
        with hang_guard(0.2, "a sleep"):
            time.sleep(30)


def test_scaling_check_passes_linear_work_and_fails_quadratic_work():
    assert_scales_linearly(lambda text: sum(ch == "a" for ch in text), lambda n: "ab" * n, n=1000)
    with pytest.raises(AssertionError, match="not linear"):
        assert_scales_linearly(lambda text: sum(text.count("a", i) for i in range(0, len(text), 16)), lambda n: "ab" * n, n=1000)
