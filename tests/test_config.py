"""Recipe loading: types, overrides, strict errors; every shipped recipe validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rl_reasoning.config import Config, RewardSpec, load_config, parse_override
from rl_reasoning.errors import ConfigError
from rl_reasoning.reward_runner import RewardRunner

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_defaults_without_recipe():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.grpo.epsilon_high is None and cfg.grpo.beta == 0


def test_yaml_and_overrides_with_types(tmp_path):
    p = write(tmp_path, "optim: {lr: 3.0e-6}\nrollout: {stop: ['</answer>']}\nmax_steps: 5\n")
    cfg = load_config(p, ["optim.lr=1e-5", "max_steps=7", "grpo.epsilon_high=0.28", "rollout.temperature=1", "resume=true"])
    assert cfg.optim.lr == pytest.approx(1e-5)  # YAML 1.1 reads 1e-5 as a string; we coerce it
    assert cfg.max_steps == 7 and cfg.grpo.epsilon_high == 0.28
    assert isinstance(cfg.rollout.temperature, float) and cfg.rollout.stop == ["</answer>"]
    assert cfg.resume is True
    assert load_config(p, ["resume=runs/x/checkpoints/step-000002"]).resume == "runs/x/checkpoints/step-000002"


def test_reward_entries_carry_parameters_and_weights(tmp_path):
    p = write(tmp_path, "rewards:\n  - math\n  - {name: format, weight: 0.2, mode: tag_count}\n")
    cfg = load_config(p)
    assert cfg.rewards == [RewardSpec("math", 1.0, {}), RewardSpec("format", 0.2, {"mode": "tag_count"})]
    assert cfg.weights() == [1.0, 0.2]
    assert load_config(p, ["reward_weights=[0.5, 0.5]"]).weights() == [0.5, 0.5]


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim: {lrr: 1}", "unknown key 'optim.lrr' (did you mean optim.lr?)"),
        ("grpo: {scale_rewards: yes_please}", "grpo.scale_rewards: 'yes_please' is not valid; choose one of 'group', 'batch', 'none'"),
        ("max_steps: many", "max_steps: expected an integer"),
        ("max_steps: 0", "max_steps: must be >= 1"),
        ("rollout: {num_generations: 1}", "rollout.num_generations: must be >= 2"),
        ("rollout: {top_p: 1.5}", "rollout.top_p: must be in (0, 1]"),
        ("rollout: {temperature: 0}", "rollout.temperature: must be > 0 for training"),
        ("rollout: 3", "rollout: expected a mapping"),
        ("grpo: {mask_truncated_completions: maybe}", "grpo.mask_truncated_completions: expected true or false"),
        ("prompt: {template: 'no placeholder'}", "prompt.template: must be 'chat', 'r1zero', or a string containing {question}"),
        ("rewards: [{weight: 1}]", "rewards[0]: a reward entry needs a 'name'"),
        ("rewards: [math]\nreward_weights: [1, 2]", "reward_weights: has 2 values but rewards has 1 entries"),
        ("rewards: [math]\naccuracy_reward: format", "accuracy_reward: 'format' is not one of the rewards ['math']"),
        ("data: {source: file}", "data.path: required when data.source is 'file'"),
        ("model: {dtype: float8}", "model.dtype: 'float8' is not valid"),
        ("- a list", "the recipe must be a mapping"),
        ("max_steps: [", "not valid YAML"),
        ("optim: {lr: .inf}", "optim.lr: must be a finite number"),
        ("rollout: {temperature: .nan}", "rollout.temperature: must be a finite number"),
        ("rollout: {stop: ['']}", "rollout.stop: stop strings must not be empty"),
        ("optim: {adam_beta1: 1.5}", "optim.adam_beta1: must be in [0, 1)"),
        ("optim: {weight_decay: -1}", "optim.weight_decay: must be >= 0"),
        ("eval: {max_new_tokens: -5}", "eval.max_new_tokens: must be >= 1"),
        ("threads: -3", "threads: must be >= 1"),
        ("rewards: [{name: math, weight: .nan}]", "rewards[0].weight: must be a finite number"),
        ("eval: {num_samples: 4, k: [8]}", "eval.k: each k must be between 1 and eval.num_samples"),
        ("data: {source: file, path: x.jsonl, split: test}", "data.split: has no effect with data.source 'file' (it is read only with data.source hf)"),
        ("data: {split: validation}", "data.split: has no effect with data.source 'reasoning_gym'"),
        ("data: {source: humaneval, task_config: {max_digits: 2}}", "data.task_config: has no effect with data.source 'humaneval' (it is read only with data.source code_tasks or reasoning_gym)"),
        ("data: {path: x.jsonl}", "data.path: has no effect with data.source 'reasoning_gym' (it is read only with data.source file)"),
        ("data: {source: hf, name: openai/gsm8k, path: x.jsonl}", "data.path: has no effect with data.source 'hf'"),
        ("data: {answer_format: gsm8k}", "data.answer_format: has no effect with data.source 'reasoning_gym' (it is read only with data.source file or hf)"),
        ("data: {mixture: [{task: leg_counting}], task_config: {max_digits: 2}}", "data.task_config: has no effect with data.source 'reasoning_gym' (a mixture sets its own tasks and configs)"),
        ("data: {source: file, path: x.jsonl, mixture: [{task: leg_counting}]}", "data.mixture: has no effect with data.source 'file'"),
        ("data: {train_size: 0}", "data.train_size: must be >= 1"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)


def test_bad_overrides():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["max_steps"])
    with pytest.raises(ConfigError, match="max_steps: expected an integer"):
        load_config(None, ["max_steps.x=1"])
    with pytest.raises(ConfigError, match="optim.lr is not a section"):
        load_config(None, ["optim.lr=1", "optim.lr.x=2"])
    assert parse_override("prompt.prefill=<think>") == ("prompt.prefill", "<think>")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_recipe_validates(recipe, monkeypatch):
    path = RECIPES / recipe
    monkeypatch.syspath_prepend(str(RECIPES))  # as the CLI does: reward modules next to the recipe
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# Launch:") and recipe in first_line
    cfg = load_config(path)
    RewardRunner(cfg.rewards, cfg.weights())  # every reward name and parameter resolves


@pytest.mark.parametrize("name", sorted(p.name for p in (RECIPES / "accelerate_configs").glob("*.yaml")))
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = RECIPES / "accelerate_configs" / name
    assert "accelerate launch --config_file recipes/accelerate_configs/" + name in path.read_text()
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes >= 1 and yaml.safe_load(path.read_text())["distributed_type"] == str(cfg.distributed_type.value)


@pytest.mark.parametrize("overrides", [
    ["data.source=hf", "data.name=openai/gsm8k", "data.config_name=main", "data.split=test", "data.answer_format=gsm8k"],
    ["data.source=file", "data.path=x.jsonl", "data.question_column=q", "data.on_bad_row=skip", "data.train_size=5"],
    ["data.source=humaneval", "data.train_size=100", "data.eval_size=64", "data.seed=3"],
    ["data.task=leg_counting", "data.task_config={min_animals: 2}", "data.train_size=100"],
    ["data.mixture=[{task: leg_counting}]"],
], ids=["hf", "file", "humaneval", "reasoning_gym", "mixture"])
def test_data_keys_the_source_reads_are_accepted(overrides):
    """Each key reaches the config as given, and none counts as unused (a key the source ignores is refused: above)."""
    data = load_config(None, overrides).data
    for override in overrides:
        key, value = override.removeprefix("data.").split("=", 1)
        assert getattr(data, key) == yaml.safe_load(value), key
    assert data.unused_keys() == []


def test_a_runs_config_yaml_loads_back_as_a_recipe(tmp_path):
    """config.yaml (dump_config) is a recipe: it loads to the same config, and so does one written
    before data.split and data.train_size defaulted to null (`split: train` was then the default)."""
    from rl_reasoning.config import dump_config

    cfg = load_config(None, ["data.task_config={min_digits: 2}", "optim.lr=3e-6"])
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg
    older = dump_config(cfg).replace("split: null", "split: train")
    assert "split: train" in older and load_config(write(tmp_path, older)).data.split == "train"


def test_advantage_estimator_keys_that_do_nothing_are_refused():
    from rl_reasoning.config import Config, ConfigError, DistillConfig, GRPOConfig

    Config(grpo=GRPOConfig(advantage_estimator="rloo")).validate()
    with pytest.raises(ConfigError, match="grpo.scale_rewards: has no effect with grpo.advantage_estimator: rloo"):
        Config(grpo=GRPOConfig(advantage_estimator="rloo", scale_rewards="none")).validate()
    with pytest.raises(ConfigError, match="grpo.advantage_estimator: on-policy distillation"):
        Config(grpo=GRPOConfig(advantage_estimator="reinforce_plus_plus"), distill=DistillConfig(teacher="x")).validate()
    from rl_reasoning.config import load_config

    with pytest.raises(ConfigError, match="grpo.advantage_estimator"):
        load_config(None, ["grpo.advantage_estimator=ppo"])
