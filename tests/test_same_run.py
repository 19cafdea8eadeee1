"""bench/same_run.py: two runs equal up to their timings pass; any other difference, in a record or a weight, fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.bench_scripts import load_bench


def make_run(path: Path, step_seconds: float, tool_seconds: float, loss: float = 0.25, weight: float = 1.0) -> Path:
    path.mkdir(parents=True)
    metrics = {"step": 1, "loss": loss, "time/step": step_seconds, "throughput/tokens_per_s": 1 / step_seconds}
    trace = {"step": 1, "completion": "x", "tool_calls": [{"name": "calculator", "output": "2", "seconds": tool_seconds}]}
    (path / "metrics.jsonl").write_text(json.dumps(metrics) + "\n")
    (path / "traces.jsonl").write_text(json.dumps(trace) + "\n")
    checkpoint = path / "checkpoints" / "step-000001"
    checkpoint.mkdir(parents=True)
    save_file({"w": torch.full((2, 3), weight)}, str(checkpoint / "model.safetensors"))
    return path


def test_timings_alone_do_not_make_runs_differ(tmp_path, capsys):
    same_run = load_bench("same_run")
    a = make_run(tmp_path / "a", step_seconds=3.0, tool_seconds=0.001)
    b = make_run(tmp_path / "b", step_seconds=5.0, tool_seconds=0.002)  # timings at the top level and inside a list
    assert same_run.main([str(a), str(b)]) == 0
    assert "identical, timings aside" in capsys.readouterr().out


def test_a_changed_loss_or_weight_or_missing_checkpoint_is_reported(tmp_path, capsys):
    same_run = load_bench("same_run")
    a = make_run(tmp_path / "a", 3.0, 0.001)
    assert same_run.main([str(a), str(make_run(tmp_path / "loss", 3.0, 0.001, loss=0.26))]) == 1
    assert "metrics.jsonl          DIFFERENT  (record 0 differs in loss)" in capsys.readouterr().out
    assert same_run.main([str(a), str(make_run(tmp_path / "weight", 3.0, 0.001, weight=1.0 + 1e-6))]) == 1
    assert "step-000001 weights    DIFFERENT" in capsys.readouterr().out
    missing = make_run(tmp_path / "missing", 3.0, 0.001)
    shutil.rmtree(missing / "checkpoints")
    assert same_run.main([str(a), str(missing)]) == 1
    assert "missing in the second run" in capsys.readouterr().out
    assert same_run.main([str(a)]) == 2
