"""pass@k, maj@k and the `rl-reasoning eval` command (tiny model)."""

from __future__ import annotations

import json
from math import comb

import pytest

from rl_reasoning import cli
from rl_reasoning.evaluation import majority_vote, pass_at_k
from rl_reasoning.results import paired_bootstrap


@pytest.mark.parametrize("n, c, k", [(8, 0, 1), (8, 1, 1), (8, 3, 4), (8, 8, 8), (10, 2, 5), (5, 4, 3)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_majority_vote_ties_go_to_the_first_answer():
    assert majority_vote(["3", "4", "4", "3"]) == 0  # 2-2 tie: "3" appeared first
    assert majority_vote(["4", "3", "3", "4"]) == 0
    assert majority_vote([None, "5", "6", "6"]) == 2
    assert majority_vote([None, None]) is None


def test_paired_bootstrap_interval_brackets_the_difference():
    import numpy as np

    a = np.array([0, 0, 1, 0, 1, 0, 0, 1] * 10, dtype=float)
    b = np.array([1, 0, 1, 1, 1, 0, 1, 1] * 10, dtype=float)
    mean, lo, hi = paired_bootstrap(a, b)
    assert mean == pytest.approx(0.375) and lo < mean < hi and lo > 0


def test_eval_command_writes_json_and_compares(tiny_model_dir, tmp_path, capsys):
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    base = ["eval", "--model", str(tiny_model_dir), "--task", "basic_arithmetic", "--problems", "6", "--max-new-tokens", "6",
            "--n", "4", "--k", "1,2,4", "--batch-size", "8"]
    assert cli.main([*base, "--out", str(out_a)]) == 0
    table = capsys.readouterr().out
    assert "| greedy pass@1 |" in table and "| pass@4 |" in table and "| maj@4 |" in table and "| think_words |" in table
    result = json.loads(out_a.read_text())
    assert result["settings"]["n"] == 4 and len(result["per_problem"]) == 6
    m = result["metrics"]
    assert 0 <= m["pass@1"] <= m["pass@2"] <= m["pass@4"] <= 1
    first = result["per_problem"][0]
    assert len(first["samples_correct"]) == 4 and "maj@2" in first
    assert cli.main([*base, "--temperature", "1.0", "--out", str(out_b)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--compare", str(out_a), str(out_b)]) == 0
    report = capsys.readouterr().out
    assert "paired over 6 shared problems" in report and "| greedy pass@1 |" in report and "95 % CI" in report


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["eval", "--model", "/no/such/dir", "--task", "basic_arithmetic", "--k", "1,16", "--n", "8"]) == 2
    assert "every k must be <= --n" in capsys.readouterr().err
    assert cli.main(["eval", "--compare", str(tmp_path / "x.json"), str(tmp_path / "y.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def record_sampling(monkeypatch) -> list:
    """Every RolloutConfig our engine is asked to generate with, in call order."""
    from rl_reasoning.rollout import RolloutEngine

    seen, generate = [], RolloutEngine.generate

    def spy(self, prompts, params, *args, **kwargs):
        seen.append(params)
        return generate(self, prompts, params, *args, **kwargs)

    monkeypatch.setattr(RolloutEngine, "generate", spy)
    return seen


def test_eval_samples_with_the_recipes_top_p(tiny_model_dir, tmp_path, monkeypatch):
    """`rollout.top_p=...` reaches the sampled evaluation (it used to be dropped: eval sampled with top_p 1)."""
    seen = record_sampling(monkeypatch)
    out = tmp_path / "r.json"
    assert cli.main(["eval", "--model", str(tiny_model_dir), "--task", "basic_arithmetic", "--problems", "2",
                     "--n", "2", "--k", "2", "rollout.top_p=0.5", "--out", str(out)]) == 0
    sampled = [p for p in seen if p.temperature > 0]
    assert sampled and all(p.top_p == 0.5 and p.num_generations == 2 for p in sampled)
    assert json.loads(out.read_text())["settings"]["top_p"] == 0.5


def write_recipe(tmp_path, model_dir, text: str = "", rollout: str = "{max_new_tokens: 5, top_p: 0.7}") -> str:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {model_dir}}}\ndata: {{source: reasoning_gym, task: basic_arithmetic, eval_size: 3}}\n"
                      f"rollout: {rollout}\n" + text)
    return str(recipe)


def test_eval_takes_sampling_settings_from_the_recipe_and_flags_win(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Defaults < recipe < command line, for eval.num_samples, eval.k and eval.temperature."""
    recipe = write_recipe(tmp_path, tiny_model_dir, "eval: {num_samples: 3, k: [1, 3], temperature: 0.9, batch_size: 6}\n")
    seen = record_sampling(monkeypatch)
    out = tmp_path / "r.json"
    assert cli.main(["eval", "--recipe", recipe, "--out", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["n"], settings["k"], settings["temperature"]) == (3, [1, 3], 0.9)
    assert [(p.num_generations, p.temperature) for p in seen if p.temperature > 0] == [(3, 0.9), (3, 0.9)]  # 6 completions a batch
    assert "| pass@3 |" in capsys.readouterr().out

    assert cli.main(["eval", "--recipe", recipe, "--n", "2", "--k", "2", "--temperature", "0.5", "--out", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["n"], settings["k"], settings["temperature"]) == (2, [2], 0.5)
    assert cli.main(["eval", "--recipe", recipe, "--k", "", "--n", "0", "--out", str(out)]) == 0  # greedy only
    assert json.loads(out.read_text())["settings"]["n"] == 0
    capsys.readouterr()
    assert cli.main(["eval", "--recipe", recipe, "--k", "1,4"]) == 2  # the recipe's n (3) is too small for k = 4
    assert "every k must be <= --n (3, from the recipe's eval.num_samples)" in capsys.readouterr().err


def test_eval_imports_a_reward_module_beside_the_recipe(tiny_model_dir, tmp_path):
    """As `train` and `distill` do, `eval --recipe` can name a reward defined in a module next to the recipe."""
    (tmp_path / "beside_rewards.py").write_text("def always_right(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    recipe = write_recipe(tmp_path, tiny_model_dir, "rewards: [{name: 'beside_rewards:always_right'}]\n")
    out = tmp_path / "r.json"
    assert cli.main(["eval", "--recipe", recipe, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["accuracy"] == 1.0


def test_packed_weights_setting_reaches_evaluation(tiny_model_dir, tmp_path, monkeypatch):
    """`rollout.packed_weights=false` turns packing off for evaluation too (it used to apply to training rollouts only)."""
    from rl_reasoning import rollout

    enabled_calls, packed = [], rollout.packed_linear_weights

    def spy(model, batch_hint=16, enabled=True):
        enabled_calls.append(enabled)
        return packed(model, batch_hint, enabled)

    monkeypatch.setattr(rollout, "packed_linear_weights", spy)
    recipe = write_recipe(tmp_path, tiny_model_dir)
    assert cli.main(["eval", "--recipe", recipe, "--n", "2", "--k", "2", "rollout.packed_weights=false"]) == 0
    assert enabled_calls and not any(enabled_calls)
    enabled_calls.clear()
    assert cli.main(["eval", "--recipe", recipe]) == 0
    assert enabled_calls and all(enabled_calls)


def test_the_trainer_and_eval_command_score_with_the_same_settings(tiny_model_dir, tmp_path, monkeypatch):
    """The trainer's held-out evaluation and `rl-reasoning eval --recipe` generate with identical
    RolloutConfigs (greedy and sampled), including the recipe's top_p and stop strings."""
    from rl_reasoning.config import load_config
    from rl_reasoning.trainer import GRPOTrainer

    recipe = write_recipe(tmp_path, tiny_model_dir, "eval: {num_samples: 2, k: [2], batch_size: 6}\n",
                          rollout="{max_new_tokens: 5, top_p: 0.7, stop: ['!'], num_generations: 2}")
    seen = record_sampling(monkeypatch)
    trainer = GRPOTrainer(load_config(recipe, [f"output_dir={tmp_path / 'run'}"]), quiet=True)
    trainer.run_eval()
    in_training = list(seen)
    seen.clear()
    assert cli.main(["eval", "--recipe", recipe]) == 0
    assert in_training == seen
    assert any(p.temperature > 0 and p.top_p == 0.7 and p.stop == ["!"] for p in seen)


def test_eval_does_not_import_the_training_stack(tiny_model_dir):
    """`rl-reasoning eval` loads what evaluation needs: not the trainer, the update or TRL."""
    import subprocess
    import sys

    code = ("import sys; from rl_reasoning import cli; "
            f"assert cli.main(['eval', '--model', {str(tiny_model_dir)!r}, '--task', 'basic_arithmetic', '--problems', '2', "
            "'--max-new-tokens', '3']) == 0; "
            "print(sorted(m for m in ('rl_reasoning.trainer', 'rl_reasoning.update', 'rl_reasoning.sharded', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_votes_read_answers_as_the_math_reward_does():
    from rl_reasoning.evaluation import _answer_of, majority_vote

    answers = [_answer_of(c, "none") for c in ("\\boxed{\\$1,250}", "The final answer is 1250.", "<answer>7</answer>", "\\boxed{1250}")]
    assert answers[0] == answers[1] == answers[3] == "1250" and answers[2] == "7"
    assert majority_vote(answers) == 0
