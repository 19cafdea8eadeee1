"""Data-parallel training under `accelerate launch --num_processes 2` (gloo on CPU), against a
single-process run on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl_reasoning.jsonl import read_records

ROOT = Path(__file__).resolve().parent.parent
SLOW = pytest.mark.slow  # four launches of two processes: about a minute


def write_recipe(path: Path, model_dir: Path, data: Path, **extra) -> Path:
    recipe = {
        "model": {"name": str(model_dir)},
        "data": {"source": "jsonl", "path": str(data), "eval_size": 4},
        "rollout": {"num_generations": 4, "max_new_tokens": 8, "temperature": 1.0},
        "prompts_per_step": 4,
        "max_steps": 2,
        "optim": {"lr": 0.001, "micro_batch_size": 3},
        "grpo": {"loss_type": "dapo", "scale_rewards": "batch"},
        "eval": {"at_start": False, "at_end": False},
        "rewards": [{"name": "tests.reward_fns:char_variety"}, {"name": "format", "weight": 0.5}],
        **extra,
    }
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def launch(recipe: Path, out: Path, processes: int, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    module = ["-m", "rl_reasoning.train", str(recipe), f"output_dir={out}", *overrides]
    if processes == 1:
        cmd = [sys.executable, *module]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes/accelerate_configs/ddp_cpu.yaml"), "--num_processes", str(processes), *module]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    return load_file(str(ckpts[-1] / "model.safetensors"))


def learning(run: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith(("time/", "throughput/"))} for m in read_records(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n" for a in range(10) for b in range(4)))
    recipe = write_recipe(tmp / "recipe.yaml", tiny_model_dir, data)
    out = {"single": tmp / "single", "ddp": tmp / "ddp", "resumed": tmp / "resumed", "model": tiny_model_dir}
    launch(recipe, out["single"], 1)
    out["ddp_log"] = launch(recipe, out["ddp"], 2)
    launch(recipe, out["resumed"], 2, "max_steps=1")
    launch(recipe, out["resumed"], 2, "resume=true")
    return out


@SLOW
def test_two_processes_keep_identical_replicas(runs):
    summary = json.loads((runs["ddp"] / "summary.json").read_text())
    assert summary["processes"] == 2
    a, b = summary["replica_checksums"]
    assert a == b


@SLOW
def test_two_processes_equal_one_process_on_the_same_global_batch(runs):
    single, ddp = learning(runs["single"]), learning(runs["ddp"])
    assert [m["step"] for m in ddp] == [1, 2]
    for s, d in zip(single, ddp):
        for key in ("reward/mean", "reward/std", "accuracy", "completions/mean_length", "entropy", "tokens/generated",
                    "tokens/prompt", "update/trained_sequences", "loss", "grad_norm", "advantage/abs_mean"):
            assert d[key] == pytest.approx(s[key], rel=1e-4, abs=1e-6), key
    w1, w2 = final_weights(runs["single"]), final_weights(runs["ddp"])
    w0 = load_file(str(runs["model"] / "model.safetensors"))
    assert min(float((w1[k] - w0[k]).abs().max()) for k in w0) > 1e-4  # every tensor moved: the comparison has teeth
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-5, rtol=1e-4), name


@SLOW
def test_traces_hold_every_completion_exactly_once(runs):
    single = list(read_records(runs["single"] / "traces.jsonl"))
    ddp = list(read_records(runs["ddp"] / "traces.jsonl"))
    keys = Counter((t["step"], t["prompt_id"], t["group_index"]) for t in ddp)
    assert len(ddp) == 2 * 4 * 4 and set(keys.values()) == {1}
    assert [t["completion"] for t in ddp] == [t["completion"] for t in single]  # same samples, same order
    assert [t["advantage"] for t in ddp] == pytest.approx([t["advantage"] for t in single], abs=1e-5)


@SLOW
def test_resume_with_the_same_process_count_reproduces_the_run(runs):
    straight, resumed = learning(runs["ddp"]), learning(runs["resumed"])
    assert [m["step"] for m in resumed] == [1, 2]
    for s, r in zip(straight, resumed):
        assert r["reward/mean"] == pytest.approx(s["reward/mean"], rel=1e-5) and r["loss"] == pytest.approx(s["loss"], rel=1e-4, abs=1e-7)
    w1, w2 = final_weights(runs["ddp"]), final_weights(runs["resumed"])
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


@SLOW
def test_only_rank_zero_prints_the_step_lines(runs):
    log = runs["ddp_log"].stdout
    assert log.count("step    1 ") == 1, log[-2000:]


# ------------------------------------------------- FSDP / DeepSpeed configs (validated, not run: no GPU here)


def launcher_environment(config: str, monkeypatch) -> dict:
    """The environment `accelerate launch --config_file CONFIG` hands each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ROOT / "recipes/accelerate_configs" / config), "-m", "rl_reasoning.train", "r.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    new = {k: v for k, v in env.items() if os.environ.get(k) != v}
    for key, value in new.items():
        monkeypatch.setenv(key, value)
    return new


@pytest.mark.parametrize("config, stage", [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_configs_build_accelerates_plugin(config, stage, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    env = launcher_environment(config, monkeypatch)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage
    # ZeRO-3 checkpoints need the full weights gathered on save
    assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)


def test_fsdp_config_builds_an_fsdp2_plugin(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    env = launcher_environment("fsdp.yaml", monkeypatch)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"


@pytest.mark.parametrize("config", ["fsdp.yaml", "deepspeed_zero3.yaml"])
def test_a_sharded_config_without_gpus_is_refused_not_silently_ddp(config, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Without GPUs accelerate turns an FSDP/DeepSpeed launch into plain DDP on CPU (or into
    independent processes): the trainer must stop instead of training differently than asked."""
    from rl_reasoning import cli

    launcher_environment(config, monkeypatch)
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, data, max_steps=1)
    assert cli.main(["train", str(recipe), f"output_dir={tmp_path / 'run'}", "data.eval_size=0"]) == 2
    err = capsys.readouterr().err
    assert "ddp_cpu.yaml" in err or "pip install deepspeed" in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
