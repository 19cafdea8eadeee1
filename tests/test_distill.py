"""`rl-reasoning distill`: rejection-sampling filter on hand-built inputs, and the whole pipeline
(sample -> filter -> TRL SFT -> evaluate) with the tiny model."""

from __future__ import annotations

import json
import math

import torch

from rl_reasoning import cli
from rl_reasoning.distill import DistillStats, select_completions


def test_filter_keeps_correct_formatted_distinct_completions_up_to_the_limit():
    completions = [
        "<think>a</think> <answer>1</answer>", "<think>a</think>\n  <answer>1</answer> ",  # same text up to whitespace
        "<think>b</think><answer>1</answer>", "no format 1", "<think>c</think><answer>2</answer>",
        "<think>x</think><answer>9</answer>", "<think>y</think><answer>9</answer>", "<think>z</think><answer>9</answer>",
    ]
    scores = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, math.nan, 0.5]
    formatted = [True, True, True, False, True, True, True, True]
    stats = DistillStats()
    kept = select_completions(completions, scores, formatted, samples=4, keep_per_problem=1, require_format=True, stats=stats)
    assert kept == [[0], [5]]  # problem 0: first of the correct+formatted; problem 1: only full credit counts
    assert (stats.correct, stats.correct_and_formatted, stats.unique, stats.kept) == (5, 4, 3, 2)

    stats = DistillStats()
    kept = select_completions(completions, scores, formatted, samples=4, keep_per_problem=5, require_format=False, stats=stats)
    assert kept == [[0, 2, 3], [5]]  # duplicate dropped; the unformatted correct one is kept without the format rule


def test_distill_command_samples_filters_finetunes_and_evaluates(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {{name: {tiny_model_dir}}}\n"
        f"data: {{source: file, path: {arithmetic_jsonl}, eval_size: 4}}\n"
        "rollout: {num_generations: 4, max_new_tokens: 8, temperature: 1.0}\n"
        "rewards: [{name: 'tests.reward_fns:has_letter_e'}]\n"
        "eval: {batch_size: 16}\n"
    )
    out = tmp_path / "distill"
    code = cli.main(["distill", "--recipe", str(recipe), "--teacher", str(tiny_model_dir), "--out", str(out),
                     "--problems", "6", "--samples", "4", "--keep-per-problem", "2", "--no-require-format", "--epochs", "1",
                     "--lr", "1e-3", "--sft-batch-size", "4"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["counts"]
    assert counts["problems"] == 6 and counts["sampled"] == 24
    assert 0 < counts["kept"] <= min(counts["unique"], 12) <= counts["correct"] < 24  # the filter did pass some and drop some
    rows = [json.loads(line) for line in (out / "sft_data.jsonl").read_text().splitlines()]
    assert len(rows) == counts["kept"] and all("e" in r["completion"] for r in rows)  # only reward-passing completions
    held_out = {r["question"] for r in json.loads((out / "eval.json").read_text())["per_problem"]}
    assert len(held_out) == 4 and not held_out & {r["question"] for r in rows}  # training problems only
    assert set(summary["seconds"]) == {"sample", "finetune", "evaluate"} and summary["student_eval"]["num_problems"] == 4

    from rl_reasoning.models import load_model

    before, after = load_model(str(tiny_model_dir)).model, load_model(str(out / "student")).model
    moved = [n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(a, b)]
    assert moved  # SFT changed the student


def test_distill_with_nothing_passing_is_a_clear_error(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{source: file, path: {arithmetic_jsonl}, eval_size: 4}}\n"
                      "rollout: {num_generations: 2, max_new_tokens: 4}\nrewards: [{name: 'tests.reward_fns:constant'}]\n")
    out = tmp_path / "d"
    assert cli.main(["distill", "--recipe", str(recipe), "--teacher", str(tiny_model_dir), "--out", str(out), "--problems", "2", "--samples", "2"]) == 2
    assert "no completion that passed the filter" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["counts"]["sampled"] == 4  # what was done is still written
    assert cli.main(["distill", "--recipe", str(recipe), "--teacher", str(tiny_model_dir), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_distillation_samples_with_the_recipes_rollout_settings(tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch):
    """The teacher samples with the recipe's top_p, stop strings and packed-weights choice (packing used to be always on)."""
    from rl_reasoning import rollout
    from rl_reasoning.config import load_config
    from rl_reasoning.distill import build_sft_data

    calls, generate, packed = [], rollout.RolloutEngine.generate, rollout.packed_linear_weights

    def generate_spy(self, prompts, params, *args, **kwargs):
        calls.append(params)
        return generate(self, prompts, params, *args, **kwargs)

    def packed_spy(model, batch_hint=16, enabled=True):
        calls.append(enabled)
        return packed(model, batch_hint, enabled)

    monkeypatch.setattr(rollout.RolloutEngine, "generate", generate_spy)
    monkeypatch.setattr(rollout, "packed_linear_weights", packed_spy)
    cfg = load_config(None, [f"model.name={tiny_model_dir}", "data.source=file", f"data.path={arithmetic_jsonl}", "data.eval_size=4",
                             "rollout.max_new_tokens=4", "rollout.top_p=0.8", "rollout.stop=['!']", "rollout.packed_weights=false",
                             "rewards=[{name: 'tests.reward_fns:has_letter_e'}]"])
    build_sft_data(cfg, str(tiny_model_dir), problems=2, samples=3, temperature=0.9, keep_per_problem=1, require_format=False,
                   batch_size=6, stats=DistillStats())
    params, enabled = calls[0], calls[1]
    assert (params.num_generations, params.temperature, params.top_p, params.stop, params.packed_weights) == (3, 0.9, 0.8, ["!"], False)
    assert enabled is False


def test_distill_refuses_tools_and_environments_with_a_one_line_error(arithmetic_jsonl, tmp_path, capsys):
    """docs/tools.md: `rl-reasoning distill` refuses tools and environments, before loading the teacher (absent here)."""
    for k, setting in enumerate(["rollout: {tools: [calculator]}", "rollout: {environment: retry}"]):
        recipe = tmp_path / f"recipe{k}.yaml"
        recipe.write_text(f"data: {{source: file, path: {arithmetic_jsonl}, eval_size: 4}}\n{setting}\n"
                          "rewards: [{name: 'tests.reward_fns:has_letter_e'}]\n")
        code = cli.main(["distill", "--recipe", str(recipe), "--teacher", str(tmp_path / "no-model"), "--out", str(tmp_path / f"out{k}")])
        err = capsys.readouterr().err
        assert code == 2 and err == ("error: distill: rejection-sampled SFT of tool calls or environment turns is not supported yet; "
                                     "remove rollout.tools / rollout.environment from the recipe\n"), (setting, err)
