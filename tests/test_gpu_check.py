"""bench/gpu_check.sh end to end on CPU with tiny shapes (`--dry-run`): the command a GPU session
runs, so that it cannot fail for a silly reason when a GPU finally appears."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["versions"]["torch"]
    decode = report["decode"]
    assert set(decode) == {"dynamic", "static_eager"}  # no graph without CUDA
    for entry in decode.values():
        assert entry["tokens"] > 0 and entry["ms_per_step"] > 0 and entry["tok_per_s"] > 0
    # the static decode sampled what the dynamic engine sampled, from the same seed
    assert report["equivalence"]["dynamic_vs_static_eager"]["rows_identical"] == 1
    plans = {k: v for k, v in report["update"].items() if isinstance(v, dict)}
    assert len(plans) == 3 and all(p["update_s"] > 0 and p["micro_batches"] >= 1 for p in plans.values())
    stale = report["stale_weights"]
    assert stale["fp32_masters_moved_share"] > 0.9 > 0.2 > stale["pure_bf16_moved_share"]  # bf16 rounds lr-1e-6 steps away
    trl = report["step_vs_trl"]
    assert trl["returncode"] == 0 and any("step (s)" in line for line in trl["table"]), trl


def test_without_cuda_the_check_refuses_with_one_line(tmp_path):
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--skip", "decode,update,stale,trl"], cwd=ROOT,
                            env={**os.environ, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["gpu_check: no CUDA device; use --dry-run to run the code path on CPU"]
