"""bench/layer_importance.py: the layer lists it accepts, the training problems it scores (never a
held-out question), and on a tiny model whose layer 1 is the identity: dropping that layer scores
exactly as the source does, each row equals `evaluate` on the pruned model, and a rerun scores nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rl_reasoning.errors import UserError
from rl_reasoning.tasks import TaskData
from tests.bench_scripts import load_bench
from tests.conftest import build_tiny_model, build_tokenizer

REPO = Path(__file__).resolve().parent.parent




def test_drop_lists():
    bench = load_bench("layer_importance")
    assert bench.parse_drop("9", 30) == [9]
    assert bench.parse_drop(" 9, 3 ", 30) == [3, 9]
    assert bench.parse_drop("13-15,29", 30) == [13, 14, 15, 29]
    for spec, message in [("x", "'x' is not a layer index"), ("", "no layers given"), ("3,3", "listed twice"),
                          ("2-3,3", "listed twice"), ("30", "layer 30 is out of range"), ("-1", "is not a layer index"),
                          ("0-29", "drops all 30 layers")]:
        with pytest.raises(UserError, match=message):
            bench.parse_drop(spec, 30)


def test_training_problems_skip_held_out_and_repeated_questions():
    bench = load_bench("layer_importance")
    train = [{"question": q, "answer": "1"} for q in ["a", "h1", "b", "a", "c", "h2", "d"]]
    task = TaskData(train=train, held_out=[{"question": "h1", "answer": "1"}, {"question": "h2", "answer": "1"}])
    assert [p["question"] for p in bench.training_problems(task, 3)] == ["a", "b", "c"]
    assert [p["question"] for p in bench.training_problems(task, 4)] == ["a", "b", "c", "d"]
    with pytest.raises(UserError, match="only 4 problems outside the held-out set"):
        bench.training_problems(task, 5)


@pytest.fixture(scope="module")
def tiny_with_identity_layer(tmp_path_factory) -> Path:
    """A 3-layer tiny Llama whose layer 1 writes nothing to the residual stream."""
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = build_tiny_model(len(tokenizer)).config
    config.num_hidden_layers = 3
    torch.manual_seed(3)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    path = tmp_path_factory.mktemp("tiny-identity-1")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_scores_equal_evaluate_on_the_pruned_model_and_a_rerun_scores_nothing(tiny_with_identity_layer, arithmetic_jsonl, tmp_path,
                                                                             monkeypatch, capsys):
    from rl_reasoning.config import load_config
    from rl_reasoning.evaluation import EvalSettings, evaluate
    from rl_reasoning.models import eos_token_ids, load_model
    from rl_reasoning.reward_runner import accuracy_runner
    from rl_reasoning.rollout import RolloutEngine
    from rl_reasoning.shrink import prune_layers
    from rl_reasoning.tasks import load_task

    monkeypatch.chdir(REPO)  # the recipe's reward is tests.reward_fns:has_letter_e
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_with_identity_layer}}}\n"
                      f"data: {{source: jsonl, path: {arithmetic_jsonl}, eval_size: 8}}\n"
                      "rollout: {max_new_tokens: 12}\nrewards: [{name: 'tests.reward_fns:has_letter_e'}]\n")
    out = tmp_path / "out"
    bench = load_bench("layer_importance")
    assert bench.main(["--recipe", str(recipe), "--out", str(out), "--problems", "12"]) == 0
    result = json.loads((out / "layer_importance.json").read_text())
    rows = {bench.label(r["dropped"]): r for r in result["rows"]}
    assert list(rows) == ["none (the source)", "0", "1", "2"]
    assert rows["1"]["accuracy"] == rows["none (the source)"]["accuracy"]  # an identity layer changes no greedy token
    assert rows["1"]["mean_length"] == rows["none (the source)"]["mean_length"]

    cfg = load_config(str(recipe), [])
    loaded = load_model(str(tiny_with_identity_layer))
    tok = loaded.tokenizer
    task = load_task(cfg.data)
    assert len(result["questions"]) == 12 and not set(result["questions"]) & {p["question"] for p in task.held_out}
    problems = bench.training_problems(task, 12)
    for kept, name in (([1, 2], "0"), ([0, 1], "2")):
        student = prune_layers(loaded.model, kept).eval()
        metrics, _ = evaluate(RolloutEngine(student, tok, eos_token_ids(student, tok), tok.pad_token_id), tok, problems, cfg.prompt,
                              accuracy_runner(cfg), EvalSettings.from_config(cfg), 0)
        assert rows[name]["accuracy"] == metrics["eval/accuracy"] and rows[name]["mean_length"] == metrics["eval/mean_length"]
    table = (out / "layer_importance.md").read_text()
    assert table.count("\n| ") == 5 and "| 1 | 2 |" in table  # header + 4 rows; layer 1 dropped leaves 2

    capsys.readouterr()
    assert bench.main(["--recipe", str(recipe), "--out", str(out), "--problems", "12", "--drop", "1", "--drop", "0,2"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("drop ")]
    assert len(printed) == 1 and printed[0].startswith("drop 0,2: ")  # only the new set is scored
    assert len(json.loads((out / "layer_importance.json").read_text())["rows"]) == 5


def test_bad_input_is_one_line_exit_2(tiny_with_identity_layer, arithmetic_jsonl, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_with_identity_layer}}}\ndata: {{source: jsonl, path: {arithmetic_jsonl}, eval_size: 8}}\n")
    bench = load_bench("layer_importance")
    for flags, message in [(["--drop", "3"], "layer 3 is out of range (the model has 3 layers, 0-2)"),
                           (["--problems", "0"], "--problems must be >= 1"),
                           (["--problems", "40"], "only 32 problems outside the held-out set")]:
        capsys.readouterr()
        assert bench.main(["--recipe", str(recipe), "--out", str(tmp_path / "o"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
