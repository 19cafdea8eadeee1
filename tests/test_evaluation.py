"""pass@k, maj@k and the `rl-reasoning eval` command (tiny model)."""

from __future__ import annotations

import json
from math import comb

import pytest

from rl_reasoning import cli
from rl_reasoning.eval_cli import paired_bootstrap
from rl_reasoning.evaluation import majority_vote, pass_at_k


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


def test_eval_samples_with_the_recipes_top_p(tiny_model_dir, tmp_path, monkeypatch):
    """`rollout.top_p=...` reaches the sampled evaluation (it used to be dropped: eval sampled with top_p 1)."""
    from rl_reasoning import evaluation

    seen = {}

    def fake_evaluate(*args, **kwargs):
        seen.update(kwargs)
        return {"eval/accuracy": 0.0}, []

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    out = tmp_path / "r.json"
    assert cli.main(["eval", "--model", str(tiny_model_dir), "--task", "basic_arithmetic", "--problems", "2",
                     "--n", "2", "--k", "2", "rollout.top_p=0.5", "--out", str(out)]) == 0
    assert seen["top_p"] == 0.5 and seen["n"] == 2
    assert json.loads(out.read_text())["settings"]["top_p"] == 0.5
