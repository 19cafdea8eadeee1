"""Two real GRPO steps of the quickstart recipe on the embedded SmolLM2-135M-Instruct (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rl_reasoning.config import load_config
from rl_reasoning.jsonl import read_records
from rl_reasoning.trainer import GRPOTrainer

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_two_real_steps(tmp_path):
    cfg = load_config(RECIPE, ["max_steps=2", "data.eval_size=8", "save_every=1", f"output_dir={tmp_path / 'run'}"])
    trainer = GRPOTrainer(cfg, recipe_name="quickstart", quiet=True)
    summary = trainer.train()
    run = tmp_path / "run"
    metrics = list(read_records(run / "metrics.jsonl"))
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) and m["completions/mean_length"] > 0
    # the recipe is built so that the model gets a learning signal: some groups have reward variance
    assert any(m["groups/zero_std_frac"] < 1.0 and m["update/trained_sequences"] > 0 for m in metrics)
    traces = list(read_records(run / "traces.jsonl"))
    assert len(traces) == 2 * cfg.prompts_per_step * cfg.rollout.num_generations
    assert all(t["completion"].startswith("<think>") for t in traces)  # the prefill is shown to rewards
    evals = list(read_records(run / "eval.jsonl"))
    assert [e["step"] for e in evals] == [0, 2] and evals[0]["eval/num_problems"] == 8
    assert (Path(summary["final_checkpoint"]) / "model.safetensors").is_file()
    print({k: round(v, 2) for k, v in metrics[-1].items() if k.startswith("time/")})
