"""code_tasks: the procedural programming tasks are deterministic, correct, hard to game, and held out by instance."""

from __future__ import annotations

import random

import pytest

from rewards.code import code_reward
from rl_reasoning import cli
from rl_reasoning.config import load_config
from rl_reasoning.errors import ConfigError, UserError
from rl_reasoning.tasks import EVAL_SEED_OFFSET, PromptSampler, load_task
from rl_reasoning.tasks import code_tasks as ct


def tasks(seed=0, size=60, **knobs):
    return list(ct.CodeTasks(ct.CodeTaskConfig.from_dict(knobs), seed, size))


def fenced(program: str) -> str:
    return f"Here it is:\n```python\n{program}```\n"


def test_same_seed_same_tasks_other_seed_other_tasks():
    a, b = tasks(seed=3), tasks(seed=3)
    assert a == b
    assert ct.CodeTasks(ct.CodeTaskConfig(), 3, 60)[17] == a[17]  # item i alone, without generating the others
    c = tasks(seed=4)
    assert sum(x["question"] == y["question"] for x, y in zip(a, c)) < 10


@pytest.mark.parametrize("family", ct.FAMILIES)
def test_every_reference_passes_its_own_tests_in_the_sandbox(family):
    items = tasks(seed=11, size=40, families=[family], max_ops=3)
    assert {t["family"] for t in items} == {family}
    columns = {"tests": [t["tests"] for t in items]}
    assert code_reward([fenced(t["answer"]) for t in items], **columns) == [1.0] * len(items)


def test_references_agree_with_the_specification_over_many_tasks():
    """Generation itself runs every reference against every test (check_reference); 3,000 tasks of every shape generate."""
    for seed in range(3):
        assert len(tasks(seed=seed, size=1000, max_ops=3)) == 1000


def test_a_reference_that_fails_its_own_tests_is_a_generator_error(monkeypatch):
    real = ct.SPEC_BUILDERS["numbers"]

    def off_by_one(rng, cfg):
        spec = real(rng, cfg)
        spec.reference = spec.reference.replace("return ", "return 1 + ", 1) if "return '" not in spec.reference else \
            spec.reference.replace("return '", "return 'x", 1)
        return spec

    monkeypatch.setitem(ct.SPEC_BUILDERS, "numbers", off_by_one)
    with pytest.raises(ct.GeneratorError, match="reference for numbers"):
        tasks(families=["numbers"], size=5)


def test_hidden_tests_differ_from_the_shown_examples_and_catch_echoing():
    items = tasks(seed=5, size=200, max_ops=3)
    for t in items:
        shown, hidden = t["tests"][: t["shown_tests"]], t["tests"][t["shown_tests"]:]
        assert len(shown) == 2 and len(hidden) == 6
        assert not {h["call"] for h in hidden} & {s["call"] for s in shown}
        assert len({repr(h["expected"]) for h in hidden}) >= 2  # no constant passes
        for s in shown:  # every shown example is in the question, with its value
            assert f"{s['call']} == {s['expected']!r}" in t["question"]
        for h in hidden:
            assert h["call"] not in t["question"]
    # a program that special-cases the shown examples (and returns one of their values otherwise) fails
    sample = items[:30]
    hacks = []
    for t in sample:
        shown = t["tests"][: t["shown_tests"]]
        table = {s["call"].split("(", 1)[1][:-1]: s["expected"] for s in shown}
        hacks.append(fenced(f"def {t['entry_point']}(x):\n    table = {{{', '.join(f'repr({k}): {v!r}' for k, v in table.items())}}}\n"
                            f"    return table.get(repr(x), {shown[0]['expected']!r})\n"))
    columns = {"tests": [t["tests"] for t in sample]}
    assert code_reward(hacks, **columns) == [0.0] * len(sample)
    shown_only = code_reward(hacks, tests=[t["tests"][: t["shown_tests"]] for t in sample])
    assert shown_only == [1.0] * len(sample)  # the hack does pass the examples it was shown


def test_code_reward_metrics_cache_and_examples_only(monkeypatch):
    from rewards import code as code_module

    t = tasks(seed=1, size=1, families=["lists"])[0]
    shown = t["tests"][: t["shown_tests"]]
    special = fenced(f"def {t['entry_point']}(xs):\n    known = [{', '.join(repr((s['call'].split('(', 1)[1][:-1], s['expected'])) for s in shown)}]\n"
                     f"    return [e for a, e in known if a == repr(xs)][0]\n")
    runs = []
    real = code_module.run_sample
    monkeypatch.setattr(code_module, "run_sample", lambda *a, **k: runs.append(1) or real(*a, **k))
    completions = [fenced(t["answer"])] * 3 + [special, "no code here", fenced("def broken(:\n")]
    columns = {"tests": [t["tests"]] * 6, "entry_point": [t["entry_point"]] * 6, "shown_tests": [t["shown_tests"]] * 6}
    scored = code_reward(completions, **columns)
    assert list(scored) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert len(runs) == 3  # the three identical references ran once
    m = scored.metrics
    assert m["cached_frac"] == pytest.approx(2 / 5)  # 5 programs, 2 judged by an identical one's run
    assert m["runnable_frac"] == pytest.approx(4 / 6)  # the broken one does not parse; "no code here" has no program
    assert m["examples_only_frac"] == pytest.approx(1 / 6)  # the special-casing program passes exactly the shown examples
    assert m["no_program_frac"] == pytest.approx(1 / 6)


def test_training_on_code_tasks_end_to_end(tiny_model_dir, tmp_path):
    """A tiny random model trains two steps on code_tasks with the code reward in the sandbox; runnable and examples-only rates are logged."""
    from rl_reasoning.jsonl import read_records
    from rl_reasoning.trainer import GRPOTrainer

    cfg = load_config("recipes/r1zero_code_cpu.yaml", [
        f"model.name={tiny_model_dir}", "data.eval_size=3", "data.train_size=50", "rollout.num_generations=3", "rollout.max_new_tokens=6",
        "prompts_per_step=2", "max_steps=2", "eval.batch_size=3", "eval.max_new_tokens=6", "eval.every=0", f"output_dir={tmp_path / 'run'}",
        "save_every=0", "optim.micro_batch_size=3"])
    GRPOTrainer(cfg, quiet=True).train()
    metrics = read_records(tmp_path / "run" / "metrics.jsonl")
    steps = [m for m in metrics if "reward/mean" in m]
    assert len(steps) == 2
    for m in steps:
        assert {"rewards/code/runnable_frac", "rewards/code/examples_only_frac", "rewards/code/cached_frac", "time/reward/code"} <= set(m)
    traces = read_records(tmp_path / "run" / "traces.jsonl")
    assert all(r["prompt"].endswith("```python\n") and r["completion"].startswith("```python\n") for r in traces)


def test_hidden_tests_hold_every_edge_case_and_reject_every_near_miss():
    """Each mutant (a stage ignored, a bound off by one...) that any probe input tells apart fails a hidden test."""
    cfg = ct.CodeTaskConfig(max_ops=3)
    rng = random.Random(7)
    rejected = 0
    for _ in range(400):
        spec = ct.draw_spec(rng, cfg)
        drawn = ct.draw_tests(spec, rng, cfg)
        assert drawn is not None
        shown, hidden = drawn
        edges = ct._distinct(spec.edges(random.Random(0)))
        assert all(isinstance(x, type(edges[0])) for x in hidden)
        assert hidden[0] in ([], "", 0)  # the empty / zero edge always comes first
        probes = [spec.probe(rng) for _ in range(300)]
        for mutant in spec.mutants:
            if any(ct.differs(mutant, spec.fn, x) for x in probes):
                assert any(ct.differs(mutant, spec.fn, x) for x in hidden), (spec.instance, hidden)
                rejected += 1
    assert rejected > 300


def test_stress_tests_catch_a_program_the_hidden_tests_let_through():
    task = next(t for t in tasks(seed=3, size=300, families=["lists"]) if t["instance"].endswith("|x|min"))
    stress = ct.stress_tests(task, 50)
    assert len(stress) == 50 and not {s["call"] for s in stress} & {s["call"] for s in task["tests"]}
    assert code_reward([fenced(task["answer"])], tests=[stress]) == [1.0]
    ignores_empty = fenced(f"def {task['entry_point']}(xs):\n    return min(x for x in xs)\n")  # no None for an empty selection
    assert code_reward([ignores_empty], tests=[stress]) == [0.0]


def test_held_out_instances_never_reach_training():
    cfg = load_config(None, ["data.source=code_tasks", "data.eval_size=80", "data.train_size=3000"])
    data = load_task(cfg.data)
    held = {t["instance"] for t in data.held_out}
    assert len(held) > 30
    assert not any(t["instance"] in held for t in data.train)
    assert len({t["instance"] for t in data.train}) > 300
    sampler = PromptSampler(data, seed=0)
    served = sampler.next_batch(500)
    assert not {t["instance"] for t in served} & held
    # the held-out set is the one seed + EVAL_SEED_OFFSET generates, in order
    assert data.held_out == list(ct.CodeTasks(ct.CodeTaskConfig(), cfg.data.seed + EVAL_SEED_OFFSET, 80))


def test_difficulty_knobs():
    one = tasks(seed=2, size=80, families=["lists"], min_ops=1, max_ops=1)
    three = tasks(seed=2, size=80, families=["lists"], min_ops=3, max_ops=3)
    assert all("|-|" in t["instance"] or t["instance"].endswith("|x|list") or "|x|" in t["instance"] for t in one)
    assert all("|-|" not in t["instance"] and "|x|" not in t["instance"] and not t["instance"].endswith("|list") for t in three)
    more = tasks(seed=2, size=20, shown_examples=3, hidden_tests=10, edge_cases=False)
    assert all(len(t["tests"]) == 13 and t["shown_tests"] == 3 for t in more)
    assert ct.instance_count({"families": ["lists"], "max_ops": 3}) > 1000


@pytest.mark.parametrize("knobs, message", [
    ({"difficulty": 3}, "unknown code_tasks key"),
    ({"families": ["graphs"]}, "families"),
    ({"families": "lists"}, "families"),
    ({"max_ops": 4}, "max_ops"),
    ({"min_ops": 3, "max_ops": 2}, "min_ops"),
    ({"hidden_tests": True}, "hidden_tests"),
    ({"edge_cases": "yes"}, "edge_cases"),
])
def test_bad_knobs_are_config_errors_naming_the_key(knobs, message):
    with pytest.raises(UserError, match=message):
        ct.CodeTaskConfig.from_dict(knobs)
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.source=code_tasks", f"data.task_config={knobs}"])


def test_recipe_and_cli_errors(capsys):
    cfg = load_config("recipes/r1zero_code_cpu.yaml")
    assert cfg.data.source == "code_tasks" and cfg.rewards[0].name == "code"
    assert cli.main(["train", "recipes/r1zero_code_cpu.yaml", "data.task_config={max_ops: 9}"]) == 2
    assert "data.task_config.max_ops" in capsys.readouterr().err


def test_eval_task_code_tasks_scores_with_the_code_reward():
    from argparse import Namespace

    from rl_reasoning.eval_cli import build_config

    args = Namespace(overrides=[], recipe=None, model=None, task="code_tasks", problems=5, max_new_tokens=None, batch_size=None,
                     temperature=None, k=None, n=None)
    cfg = build_config(args)
    assert cfg.data.source == "code_tasks" and [r.name for r in cfg.rewards] == ["code"]
    assert cfg.prompt.prefill == "" and cfg.prompt.system_prompt is None
    assert cfg.data.eval_size == 5
    # HumanEval is a fixed benchmark: all 164 problems unless --problems says otherwise
    args.task, args.problems = "humaneval", None
    assert build_config(args).data.eval_size == 164
    args.problems = 20
    assert build_config(args).data.eval_size == 20


def test_task_space_is_not_trivially_small():
    rng = random.Random(0)
    specs = [ct.draw_spec(rng, ct.CodeTaskConfig()) for _ in range(3000)]
    assert len({s.instance for s in specs}) > 400  # default config (max_ops 2); max_ops 3 adds ~1,000 list pipelines
    assert len({s.name for s in specs}) > 250
