"""What some tests need from the machine: vLLM, and namespace isolation for the code sandbox.

Without it such a test skips. `make test` sets RL_REASONING_REQUIRE_VLLM=1 and
RL_REASONING_REQUIRE_SANDBOX=1, so in CI a missing capability is a failure, never a skip.
"""

from __future__ import annotations

import functools
import os

import pytest

VLLM_SWITCH = "RL_REASONING_REQUIRE_VLLM"
SANDBOX_SWITCH = "RL_REASONING_REQUIRE_SANDBOX"


def require(available: bool, switch: str, missing: str) -> None:
    """Skip the test when `available` is false (`missing` says what is missing), or fail it when `switch` is 1."""
    if available:
        return
    if os.environ.get(switch) == "1":
        pytest.fail(f"{missing}, and {switch}=1 requires it", pytrace=False)
    pytest.skip(f"{missing} (with {switch}=1 this fails)")


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def namespaces_available() -> bool:
    """Whether the sandbox runs candidates in namespaces as nobody (root + unshare), not under rlimits alone."""
    from rewards.sandbox import isolation_level

    return isolation_level().startswith("namespaces")


def require_vllm() -> None:
    require(vllm_available(), VLLM_SWITCH, "vLLM is not installed (make vllm)")


def require_namespaces() -> None:
    require(namespaces_available(), SANDBOX_SWITCH,
            "the sandbox has no namespace isolation here (needs root and a working unshare): only rlimits")
