"""LoRA adapters (peft) and Mixture-of-Experts policies on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl_reasoning import cli
from rl_reasoning.jsonl import read_records
from rl_reasoning.models import load_model
from tests.test_trainer import train

LORA = dict(lora__r=4, lora__alpha=8, eval__at_start="false", eval__at_end="false", optim__lr=0.05)


def test_lora_trains_adapters_only_and_uses_the_base_model_as_reference(tiny_model_dir, arithmetic_jsonl, tmp_path):
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    trainer, summary = train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=2, grpo__beta=0.1, **LORA)
    assert trainer.ref_model is None  # no second copy of the weights
    assert 0 < summary["trainable_parameters"] < summary["model_parameters"] / 5

    policy = trainer.accelerator.unwrap_model(trainer.model)
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in policy.named_parameters() if "lora_" not in n}
    assert all(torch.equal(frozen[k], base[k]) for k in base if k in frozen)  # base weights untouched
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it moved

    metrics = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start as the identity
    assert metrics[1]["kl"] > 0  # after one update, policy != base-with-adapters-off

    ckpt = Path(summary["final_checkpoint"])
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["base_model"] == str(tiny_model_dir)


def test_export_merges_the_adapter_into_a_full_checkpoint(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys):
    trainer, summary = train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=1, **LORA)
    out = tmp_path / "merged"
    assert cli.main(["export", summary["final_checkpoint"], "-o", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file() and not (out / "adapter_config.json").exists()

    ids = torch.tensor([[5, 17, 30, 42, 8]])
    policy = trainer.accelerator.unwrap_model(trainer.model).eval()
    merged = load_model(str(out)).model.eval()
    plain = load_model(str(tiny_model_dir)).model.eval()
    with torch.no_grad():
        want, got, before = (m(input_ids=ids).logits for m in (policy, merged, plain))
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, before, atol=1e-4)  # the adapter did change the model
    # an adapter checkpoint also loads directly (what `rl-reasoning eval --model CKPT` does)
    with torch.no_grad():
        direct = load_model(summary["final_checkpoint"]).model.eval()(input_ids=ids).logits
    assert torch.allclose(direct, want, atol=1e-5)
    assert cli.main(["export", summary["final_checkpoint"], "-o", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_lora_resume_reproduces_the_run(tiny_model_dir, arithmetic_jsonl, tmp_path):
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "straight", max_steps=3, **LORA)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "split", max_steps=1, **LORA)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "split", max_steps=3, resume="true", **LORA)
    a = [m["loss"] for m in read_records(tmp_path / "straight" / "metrics.jsonl")]
    b = [m["loss"] for m in read_records(tmp_path / "split" / "metrics.jsonl")]
    assert b == pytest.approx(a, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("override, message", [("lora.r=-1", "lora.r"), ("lora.dropout=1.5", "lora.dropout"),
                                               ("lora.r=4 lora.target_modules=[no_such_layer]", "lora.target_modules")])
def test_bad_lora_settings_name_the_key(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys, override, message):
    from tests.test_trainer import overrides

    args = ["train", "-", *overrides(tiny_model_dir, arithmetic_jsonl, tmp_path / "run"), *override.split()]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}")
    args[1] = str(recipe)
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- MoE


def router_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    return {k: v for k, v in load_file(str(ckpt / "model.safetensors")).items() if k.endswith(".gate.weight")}


def test_moe_policy_logs_the_router_loss_and_expert_load(tiny_moe_dir, arithmetic_jsonl, tmp_path):
    train(tiny_moe_dir, arithmetic_jsonl, tmp_path / "run", max_steps=2, eval__at_start="false")
    metrics = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    loads = [metrics[0][f"moe/expert_load/{e}"] for e in range(4)]
    assert sum(loads) == pytest.approx(1.0) and all(x >= 0 for x in loads)
    assert metrics[0]["moe/load_max_over_mean"] == pytest.approx(max(loads) * 4)
    assert 1.0 <= metrics[0]["moe/aux_loss"] <= 4.0  # transformers' Switch loss: top_k (=2) when balanced


def test_router_loss_coefficient_drives_the_router(tiny_moe_dir, arithmetic_jsonl, tmp_path):
    """Every reward equal -> every advantage 0 -> the only gradient left is the router loss:
    the router moves with a coefficient and stays put without one."""
    initial = {k: v for k, v in load_file(str(tiny_moe_dir / "model.safetensors")).items() if k.endswith(".gate.weight")}
    assert len(initial) == 2
    for coef, should_move in (("0", False), ("1.0", True)):
        run = tmp_path / f"coef-{coef}"
        train(tiny_moe_dir, arithmetic_jsonl, run, max_steps=1, model__router_aux_loss_coef=coef,
              rewards="[{name: 'tests.reward_fns:constant'}]", eval__at_start="false", eval__at_end="false")
        moved = [not torch.equal(initial[k], w) for k, w in router_weights(run).items()]
        assert all(moved) if should_move else not any(moved), coef
