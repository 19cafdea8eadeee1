"""Trainer end to end on the tiny model: it learns something, writes everything, resumes exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl_reasoning import cli
from rl_reasoning.config import load_config
from rl_reasoning.jsonl import read_records
from rl_reasoning.trainer import GRPOTrainer

TIME_KEYS = ("time/", "throughput/")


def overrides(model_dir, data_path, out, **extra):
    base = {
        "model.name": str(model_dir),
        "data.source": "jsonl",
        "data.path": str(data_path),
        "data.eval_size": 4,
        "rollout.num_generations": 4,
        "rollout.max_new_tokens": 8,
        "prompts_per_step": 2,
        "max_steps": 3,
        "optim.lr": 0.01,
        "optim.micro_batch_size": 3,
        "eval.batch_size": 3,
        "rewards": "[{name: 'tests.reward_fns:char_variety'}, {name: format, weight: 0.5}]",
        "output_dir": str(out),
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def train(model_dir, data_path, out, **extra):
    cfg = load_config(None, overrides(model_dir, data_path, out, **extra))
    trainer = GRPOTrainer(cfg, quiet=True)
    summary = trainer.train()
    return trainer, summary


def learning_metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith(TIME_KEYS)} for m in read_records(run_dir / "metrics.jsonl")]


def test_short_run_updates_weights_and_writes_run_files(tiny_model_dir, arithmetic_jsonl, tmp_path):
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    trainer, summary = train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run")
    run = tmp_path / "run"
    after = load_file(str(Path(summary["final_checkpoint"]) / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), "every weight tensor should move with lr=1e-2"

    metrics = list(read_records(run / "metrics.jsonl"))
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in ("reward/mean", "reward/std", "accuracy", "format_rate", "completions/mean_length", "completions/max_length",
                "completions/truncated_frac", "groups/zero_std_frac", "clip/low_frac", "clip/high_frac", "entropy",
                "grad_norm", "lr", "time/generation", "time/reward", "time/update", "throughput/tokens_per_s",
                "rewards/tests.reward_fns:char_variety/mean", "rewards/format/mean", "rewards/format/frac_none"):
        assert key in metrics[0], key
    assert metrics[0]["grad_norm"] > 0 and metrics[0]["lr"] == pytest.approx(0.01)

    traces = list(read_records(run / "traces.jsonl"))
    assert len(traces) == 3 * 2 * 4
    assert {t["step"] for t in traces} == {1, 2, 3}
    first = traces[0]
    for key in ("prompt_id", "group_index", "prompt", "completion", "rewards", "reward", "advantage", "length", "truncated"):
        assert key in first
    # advantages are centred within each group
    for step in (1, 2, 3):
        for pid in {t["prompt_id"] for t in traces if t["step"] == step}:
            group = [t["advantage"] for t in traces if t["step"] == step and t["prompt_id"] == pid]
            assert len(group) == 4 and abs(sum(group)) < 1e-3

    evals = list(read_records(run / "eval.jsonl"))
    assert [e["step"] for e in evals] == [0, 3]
    assert len(list(read_records(run / "eval_traces.jsonl"))) == 2 * 4
    ckpt = Path(summary["final_checkpoint"])
    for name in ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 3
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()


def test_checkpoint_is_a_loadable_model(tiny_model_dir, arithmetic_jsonl, tmp_path):
    from rl_reasoning.models import load_model

    trainer, summary = train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=1, eval__at_start="false", eval__at_end="false")
    loaded = load_model(summary["final_checkpoint"])
    trained = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    reloaded = loaded.model.state_dict()
    assert reloaded.keys() == trained.keys()
    for name, tensor in trained.items():
        assert reloaded[name].dtype == tensor.dtype and torch.equal(reloaded[name], tensor), name  # the trained weights, bit for bit
    assert loaded.tokenizer.get_vocab() == trainer.tokenizer.get_vocab()


@pytest.mark.parametrize("extra", [
    {"grpo__loss_type": "grpo", "grpo__num_iterations": 2, "grpo__beta": 0.1, "optim__scheduler": "cosine", "optim__warmup_steps": 1},
    {"grpo__loss_type": "dr_grpo", "grpo__scale_rewards": "none", "grpo__mask_truncated_completions": "true"},
    {"grpo__advantage_estimator": "rloo"},
    {"grpo__advantage_estimator": "reinforce_plus_plus_baseline", "grpo__loss_type": "grpo"},
    {"grpo__advantage_estimator": "reinforce_plus_plus", "grpo__beta": 0.1},
])
def test_algorithm_variants_run(tiny_model_dir, arithmetic_jsonl, tmp_path, extra):
    _, _ = train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=2, eval__at_start="false", **extra)
    metrics = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    assert len(metrics) == 2
    if extra.get("grpo__advantage_estimator") == "reinforce_plus_plus":  # the k1 KL folded into the return
        assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
        assert metrics[1]["kl"] != 0
    elif "grpo__beta" in extra:
        assert "kl" in metrics[0] and metrics[1]["kl"] >= 0
        assert metrics[1]["kl"] > 0  # after one update the policy has left the reference
    if extra.get("grpo__advantage_estimator", "grpo").startswith("reinforce"):
        assert all(m["advantage/abs_mean"] > 0 for m in metrics)


def test_resume_reproduces_an_uninterrupted_run(tiny_model_dir, arithmetic_jsonl, tmp_path):
    common = dict(rollout__temperature=0.9, eval__at_start="false", eval__at_end="false")
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "straight", max_steps=4, **common)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "split", max_steps=2, **common)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "split", max_steps=4, resume="true", **common)
    straight = learning_metrics(tmp_path / "straight")
    split = learning_metrics(tmp_path / "split")
    assert [m["step"] for m in split] == [1, 2, 3, 4]
    assert straight == split
    t_straight = list(read_records(tmp_path / "straight" / "traces.jsonl"))
    t_split = list(read_records(tmp_path / "split" / "traces.jsonl"))
    assert t_straight == t_split


def test_resume_drops_records_written_after_the_checkpoint(tiny_model_dir, arithmetic_jsonl, tmp_path):
    run = tmp_path / "run"
    train(tiny_model_dir, arithmetic_jsonl, run, max_steps=3, save_every=1, save_total_limit=5, eval__at_start="false")
    # Pretend the run crashed right after step 3 was logged but resume from the step-2 checkpoint.
    train(tiny_model_dir, arithmetic_jsonl, run, max_steps=3, resume=str(run / "checkpoints" / "step-000002"), eval__at_start="false")
    steps = [t["step"] for t in read_records(run / "traces.jsonl")]
    assert steps.count(3) == 8 and steps.count(1) == 8  # step 3 once, from the resumed run
    assert len(list(read_records(run / "traces.jsonl.dropped"))) == 8
    # the abandoned step-3 checkpoint is set aside (not deleted), and the resumed run wrote its own
    assert (run / "checkpoints" / "step-000003.abandoned" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "step-000003" / "trainer_state.json").is_file()


def test_none_rewards_are_skipped_and_counted(tiny_model_dir, arithmetic_jsonl, tmp_path):
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=1, eval__at_start="false", eval__at_end="false",
          rewards="[{name: 'tests.reward_fns:skips_odd'}]")
    m = list(read_records(tmp_path / "run" / "metrics.jsonl"))[0]
    assert m["rewards/tests.reward_fns:skips_odd/frac_none"] == pytest.approx(0.5)
    traces = list(read_records(tmp_path / "run" / "traces.jsonl"))
    assert all(t["reward"] is None and t["advantage"] == 0 for t in traces if t["group_index"] % 2)


def _cli(capsys, args):
    code = cli.main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def test_reward_that_raises_stops_with_a_clear_error_and_keeps_files(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--quiet", "/dev/null", *overrides(tiny_model_dir, arithmetic_jsonl, run, max_steps=4, save_every=1,
            rewards="[{name: 'tests.reward_fns:explodes_at_step_3'}]")]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    args[2] = str(recipe)
    code, err = _cli(capsys, args)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "tests.reward_fns:explodes_at_step_3" in err and "step 3" in err and "boom" in err
    assert [t["step"] for t in read_records(run / "traces.jsonl")] == [1] * 8 + [2] * 8
    assert (run / "checkpoints" / "step-000002" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("max_stepz=3", "unknown key 'max_stepz' (did you mean max_steps?)"),
        ("grpo.loss_type=ppo", "grpo.loss_type: 'ppo' is not valid; choose one of 'grpo', 'dr_grpo', 'dapo'"),
        ("rewards=[nope]", "unknown reward 'nope'; valid names: code, env_reward, format, length, math, reasoning_gym, repetition, tool_errors"),
        ("model.name=/no/such/model", "does not exist"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("rewards=[{name: 'tests.reward_fns:wrong_length'}]", "returned 1 values for 3 completions (held-out evaluation at step 0)"),
        ("rewards=[{name: 'tests.reward_fns:returns_nan'}]", "use None to skip a sample"),
        ("rewards=[{name: format, colour: red}]", "'format' takes no parameter 'colour'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys, override, expected):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    args = ["train", "--quiet", str(recipe), *overrides(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=1), override]
    code, err = _cli(capsys, args)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert expected in err


def test_missing_recipe_and_empty_dataset(tmp_path, tiny_model_dir, capsys):
    code, err = _cli(capsys, ["train", str(tmp_path / "missing.yaml")])
    assert code == 2 and "recipe file not found" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{source: jsonl, path: {empty}}}\n")
    code, err = _cli(capsys, ["train", str(recipe), f"output_dir={tmp_path / 'run'}"])
    assert code == 2 and "has no rows" in err


def test_existing_run_dir_is_not_overwritten(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys):
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=1, eval__at_start="false", eval__at_end="false")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    code, err = _cli(capsys, ["train", "--quiet", str(recipe), *overrides(tiny_model_dir, arithmetic_jsonl, tmp_path / "run")])
    assert code == 2 and "already holds a run" in err


def test_module_entry_point_exit_code(tmp_path):
    """`python -m rl_reasoning.train` (what accelerate launch runs) exits 2 on a bad recipe."""
    proc = subprocess.run([sys.executable, "-m", "rl_reasoning.train", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: recipe file not found: {tmp_path / 'nope.yaml'}"]


def test_custom_reward_recipe_from_the_readme_runs(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys):
    """recipes/custom_reward.yaml (the README's example) trains through the CLI with its own reward module."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    example = (root / "recipes" / "my_rewards.py").read_text()
    assert example.split('"""', 2)[2].strip() in readme  # the README shows the module that runs here
    args = ["train", "--quiet", str(root / "recipes" / "custom_reward.yaml"), f"model.name={tiny_model_dir}",
            "data.train_size=50", "data.eval_size=4", "max_steps=1", "rollout.max_new_tokens=8", "prompts_per_step=2",
            "rollout.num_generations=4", "save_every=0", f"output_dir={tmp_path / 'run'}"]
    assert cli.main(args) == 0
    metrics = list(read_records(tmp_path / "run" / "metrics.jsonl"))[0]
    assert "rewards/my_rewards:short_and_right/mean" in metrics and "rewards/repetition/mean" in metrics


def test_reward_metrics_reach_the_metrics_file(tiny_model_dir, arithmetic_jsonl, tmp_path):
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=1, eval__at_start="false", eval__at_end="false",
          rewards="[{name: 'tests.reward_fns:with_metrics'}]")
    m = list(read_records(tmp_path / "run" / "metrics.jsonl"))[0]
    assert m["rewards/tests.reward_fns:with_metrics/odd_frac"] == 0.25
    assert m["time/reward/tests.reward_fns:with_metrics"] >= 0


def test_prefix_grouped_update_equals_the_plain_update(tiny_model_dir, arithmetic_jsonl, tmp_path):
    """Same rollouts, same loss and gradient norm with and without prefix grouping (first step:
    identical weights before it), and the grouped path trains fewer tokens."""
    runs = {}
    for grouped in ("true", "false"):
        train(tiny_model_dir, arithmetic_jsonl, tmp_path / grouped, max_steps=1, optim__prefix_grouping=grouped,
              optim__micro_batch_size=4, eval__at_start="false", eval__at_end="false")
        runs[grouped] = next(iter(read_records(tmp_path / grouped / "metrics.jsonl")))
    on, off = runs["true"], runs["false"]
    assert on["reward/mean"] == off["reward/mean"] and on["update/trained_sequences"] == off["update/trained_sequences"] > 0
    assert on["loss"] == pytest.approx(off["loss"], rel=1e-5, abs=1e-7)
    assert on["grad_norm"] == pytest.approx(off["grad_norm"], rel=1e-4)
    assert on["tokens/trained"] < off["tokens/trained"]


def test_reward_goes_up_on_a_trivially_learnable_task(tiny_model_dir, arithmetic_jsonl, tmp_path):
    """The learning test: rewarding the share of 'e' characters, a few GRPO steps of the tiny
    model raise the reward well above the same run with a negligible learning rate (same seeds)."""
    def rewards(lr, name):
        train(tiny_model_dir, arithmetic_jsonl, tmp_path / name, max_steps=8, optim__lr=lr, rollout__num_generations=8,
              rollout__max_new_tokens=12, rollout__temperature=1.0, prompts_per_step=2, optim__micro_batch_size=8,
              eval__at_start="false", eval__at_end="false", rewards="[{name: 'tests.reward_fns:letter_e_share'}]")
        return [m["reward/mean"] for m in read_records(tmp_path / name / "metrics.jsonl")]

    learned, frozen = rewards(0.02, "learn"), rewards(1e-12, "frozen")  # lr must be > 0; 1e-12 changes nothing
    assert learned[0] == pytest.approx(frozen[0])  # same first batch
    late_learned, late_frozen = sum(learned[-3:]) / 3, sum(frozen[-3:]) / 3
    assert late_learned > late_frozen + 0.05 and late_learned > 2 * learned[0], (learned, frozen)


def test_dropping_zero_variance_groups_renormalises_the_token_mean(tiny_model_dir, arithmetic_jsonl, tmp_path):
    """DAPO's filter: groups whose rewards are all equal leave the token-mean's denominator, so the
    first step's gradient equals the unfiltered one times all tokens / tokens of the mixed groups."""
    common = dict(max_steps=1, prompts_per_step=6, rollout__num_generations=4, rollout__max_new_tokens=6, rollout__temperature=1.0,
                  eval__at_start="false", eval__at_end="false", rewards="[{name: 'tests.reward_fns:letter_e_if_answer_even'}]")
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "keep", **common)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "drop", grpo__drop_zero_variance_groups="true", **common)
    traces = list(read_records(tmp_path / "drop" / "traces.jsonl"))
    groups: dict[str, list[dict]] = {}
    for t in traces:
        groups.setdefault(t["prompt_id"], []).append(t)
    mixed = [g for g in groups.values() if len({t["reward"] for t in g}) > 1]
    assert 0 < len(mixed) < len(groups), "the seed must give both kinds of group"
    all_tokens = sum(t["length"] for t in traces)
    mixed_tokens = sum(t["length"] for g in mixed for t in g)
    keep, drop = (next(read_records(tmp_path / name / "metrics.jsonl")) for name in ("keep", "drop"))
    assert keep["grad_norm"] > 0  # the norm before clipping
    assert drop["grad_norm"] == pytest.approx(keep["grad_norm"] * all_tokens / mixed_tokens, rel=1e-4)


def test_a_failed_checkpoint_save_is_one_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    """A full disk while saving (torch.save's zip writer raises RuntimeError) names the step and the free space,
    removes the half-written directory and leaves the earlier checkpoint loadable."""
    from rl_reasoning import checkpoint as ckpt
    from rl_reasoning.errors import UserError

    class Saves:
        def save_pretrained(self, path, **_):
            (Path(path) / "model.safetensors").write_text("w")

        def state_dict(self):
            return {}

    args = (Saves(), Saves(), Saves(), Saves(), torch.Generator(), {"sampler": {}})
    first = ckpt.save_checkpoint(tmp_path, 10, *args, keep=5)

    def disk_full(*_, **__):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 389414464 vs 389414356")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(UserError) as failed:
        ckpt.save_checkpoint(tmp_path, 20, *args, keep=5)
    message = str(failed.value)
    assert "step-20 checkpoint failed" in message and "GiB free" in message and "step-000010 are intact" in message
    assert f"output_dir={tmp_path} resume=true" in message
    assert ckpt.list_checkpoints(tmp_path) == [first]
    assert not (tmp_path / "checkpoints" / "step-000020.tmp").exists()

    with pytest.raises(UserError, match="no earlier checkpoint exists, so free space and start again"):
        ckpt.save_checkpoint(tmp_path / "fresh", 10, *args, keep=5)

    def bug(*_, **__):
        raise RuntimeError("tensors share memory")  # not a write failure: keeps its traceback

    monkeypatch.setattr(ckpt.torch, "save", bug)
    with pytest.raises(RuntimeError, match="share memory"):
        ckpt.save_checkpoint(tmp_path, 30, *args, keep=5)
