"""bench/distill_vs_rl.py: cost accounting, the comparison parser and the tables on hand-built
inputs; end to end (slow) on the tiny model: every arm's outputs, a point per checkpoint with
rising CPU minutes, the plot, and a rerun that starts no subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_scripts import load_bench

REPO = Path(__file__).resolve().parent.parent




def test_a_runs_cost_is_split_over_its_checkpoints_by_wall_time():
    bench = load_bench("distill_vs_rl")
    cost = {"wall_seconds": 100.0, "cpu_seconds": 180.0}
    seconds = {1: 20.0, 2: 30.0, 3: 10.0, 4: 20.0}  # 80 s in steps, 20 s of set-up
    split = bench.split_cost(cost, [2, 4], seconds)
    assert split[2] == pytest.approx({"wall_seconds": 70.0, "cpu_seconds": 126.0})  # set-up + steps 1-2: 70 % of the run
    assert split[4] == pytest.approx(cost)  # the last checkpoint carries the whole run
    # step times missing (a run cut short and resumed without them): linear in the step
    assert bench.split_cost(cost, [1, 4], {4: 5.0})[1] == pytest.approx({"wall_seconds": 25.0, "cpu_seconds": 45.0})


def test_checkpoint_points_are_cumulative_along_an_arm(tmp_path):
    bench = load_bench("distill_vs_rl")
    run = tmp_path / "d" / "run"
    for s in (2, 4):
        (run / "checkpoints" / f"step-{s:06d}").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time/step": 10.0}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "ti')
    points = bench.checkpoint_points(run, {"wall_seconds": 50.0, "cpu_seconds": 100.0}, {"wall_seconds": 7.0, "cpu_seconds": 30.0}, "GRPO")
    assert [p["label"] for p in points] == ["GRPO step 2", "GRPO step 4"]
    assert [p["eval"] for p in points] == ["d-step-000002", "d-step-000004"]
    assert [p["cpu_seconds"] for p in points] == pytest.approx([30 + 60.0, 30 + 100.0])  # (10 set-up + 20) / 50 of the run, then all
    assert [p["wall_seconds"] for p in points] == pytest.approx([7 + 30.0, 7 + 50.0])


def test_the_paired_row_of_eval_compare_is_parsed(tmp_path):
    from rl_reasoning.results import compare

    bench = load_bench("distill_vs_rl")
    rows_a = [{"question": f"q{i}", "correct": i < 3} for i in range(10)]
    rows_b = [{"question": f"q{i}", "correct": i < 8} for i in range(10)]
    for name, rows in (("a", rows_a), ("b", rows_b)):
        acc = sum(r["correct"] for r in rows) / len(rows)
        (tmp_path / f"{name}.json").write_text(json.dumps({"model": name, "task": "t", "metrics": {"accuracy": acc}, "per_problem": rows}))
    parsed = bench.parse_compare(compare(str(tmp_path / "a.json"), str(tmp_path / "b.json")))
    assert parsed["a"] == pytest.approx(0.3) and parsed["b"] == pytest.approx(0.8) and parsed["diff"] == pytest.approx(0.5)
    assert parsed["lo"] <= 0.5 <= parsed["hi"] and parsed["lo"] > 0
    assert bench.parse_compare("no table here") is None


def test_tables_show_every_arm_and_point():
    bench = load_bench("distill_vs_rl")
    base = {"label": "student", "accuracy": 0.31, "format_rate": 0.0, "cpu_seconds": 0.0, "wall_seconds": 0.0}
    arms = {
        "a": {"points": [base, {"label": "GRPO step 10", "accuracy": 0.5, "format_rate": 1.0, "cpu_seconds": 600.0, "wall_seconds": 300.0}],
              "vs_student": {"diff": 0.19, "lo": 0.1, "hi": 0.28}, "vs_teacher": None},
        "b": {"points": [base, {"label": "SFT student", "accuracy": 0.9, "format_rate": 1.0, "cpu_seconds": 1440.0, "wall_seconds": 800.0}],
              "vs_student": {"diff": 0.59, "lo": 0.52, "hi": 0.66}, "vs_teacher": {"diff": 0.07, "lo": 0.02, "hi": 0.12}},
    }
    teacher = {"train_cpu_seconds": 2760.0, "cpu_is_bound": True, "curve": [{"step": 60, "accuracy": 0.83, "cpu_seconds": 2760.0, "wall_seconds": 1380.0}]}
    summary = bench.summary_table(arms, teacher)
    assert "| (a) GRPO from the student | 50.0 % | 10.0 | 5.0 | – | +19.0 [+10.0, +28.0] | – |" in summary
    assert "| (b) rejection-sampled SFT | 90.0 % | 24.0 | 13.3 | ≤ 70.0 | +59.0 [+52.0, +66.0] | +7.0 [+2.0, +12.0] |" in summary
    points = bench.points_table(arms, teacher)
    assert points.count("| student |") == 2 and "| b | SFT student | 24.0 | 13.3 | 90.0 % | 100.0 % |" in points
    assert "| teacher's RL run | step 60 | ≤ 46.0 | 23.0 | 83.0 % | – |" in points


def test_bad_arms_are_refused(capsys):
    bench = load_bench("distill_vs_rl")
    with pytest.raises(SystemExit):
        bench.parse_args(["--teacher", "t", "--student", "s", "--out", "o", "--arms", "a,e"])
    assert "--arms" in capsys.readouterr().err
    args = bench.parse_args(["--teacher", "t", "--student", "s", "--out", "o", "--arms", "d,a", "x=1"])
    assert args.arms == ["a", "d"] and args.overrides == ["x=1"]


def fake_teacher_run(path: Path) -> Path:
    """A bench/learning.py output directory: learning.json with its timing, and the run's step times."""
    (path / "run").mkdir(parents=True)
    points = [{"step": s, "accuracy": a, "format_rate": 1.0} for s, a in ((0, 0.3), (1, 0.6), (2, 0.8))]
    (path / "learning.json").write_text(json.dumps({"recipe": "r", "timing": {"train_minutes": 1.0}, "points": points}))
    (path / "run" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time/step": 20.0}) + "\n" for s in (1, 2)))
    (path / "run" / "config.yaml").write_text("threads: 2\n")
    return path


def test_the_teachers_curve_is_read_from_a_learning_run(tmp_path):
    bench = load_bench("distill_vs_rl")
    t = bench.teacher_curve(fake_teacher_run(tmp_path / "teacher"))
    assert t["cpu_is_bound"] and t["train_cpu_seconds"] == pytest.approx(120.0)  # 60 s wall x 2 threads
    assert [p["cpu_seconds"] for p in t["curve"]] == pytest.approx([0.0, 80.0, 120.0])  # 20 s set-up + 20 s step 1 of 60 s


@pytest.mark.slow
def test_end_to_end_on_the_tiny_model_and_a_rerun_that_runs_nothing(tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {{name: {tiny_model_dir}}}\n"
        f"data: {{source: jsonl, path: {arithmetic_jsonl}, eval_size: 4}}\n"
        "rollout: {num_generations: 4, max_new_tokens: 8, temperature: 1.0}\n"
        "rewards: [{name: 'tests.reward_fns:has_letter_e'}, {name: format, weight: 0.5}]\n"
        "grpo: {drop_zero_variance_groups: true}\n"  # as recipes/r1zero_cpu.yaml: (c) must turn it off
        "optim: {lr: 0.01, micro_batch_size: 4}\n"
        "eval: {batch_size: 16}\n"
        "prompts_per_step: 2\nmax_steps: 60\nsave_every: 10\n"
    )
    out = tmp_path / "out"
    monkeypatch.chdir(REPO)  # the subprocesses import tests.reward_fns
    argv = ["--recipe", str(recipe), "--teacher", str(tiny_model_dir), "--shrink-from", str(tiny_model_dir),
            "--shrink-args", "--keep 0 --no-heal", "--out", str(out), "--steps", "2", "--save-every", "1",
            "--sft-args", "--problems 6 --samples 4 --no-require-format --epochs 1 --lr 1e-3 --sft-batch-size 4",
            "--teacher-run", str(fake_teacher_run(tmp_path / "teacher_run")), "optim.lr=0.005"]
    bench = load_bench("distill_vs_rl")
    calls = []
    real = bench.rl_reasoning
    monkeypatch.setattr(bench, "rl_reasoning", lambda *a: (calls.append(a[0]), real(*a))[1])
    results = bench.main(argv)
    assert sorted(calls) == ["distill", "eval", "eval", "eval", "eval", "eval", "eval", "eval", "eval", "eval", "shrink",
                             "train", "train", "train"]  # (b)'s SFT is made once for (b) and (d)

    arms = json.loads((out / "results.json").read_text())["arms"]
    assert set(arms) == {"a", "b", "c", "d"}
    labels = {k: [p["label"] for p in arm["points"]] for k, arm in arms.items()}
    assert labels == {"a": ["student", "GRPO step 1", "GRPO step 2"], "b": ["student", "SFT student"],
                      "c": ["student", "on-policy step 1", "on-policy step 2"], "d": ["student", "SFT student", "GRPO step 1", "GRPO step 2"]}
    for arm in arms.values():
        cpu = [p["cpu_seconds"] for p in arm["points"]]
        assert cpu[0] == 0 and all(x < y for x, y in zip(cpu, cpu[1:]))
        assert all(0 <= p["accuracy"] <= 1 and p["problems"] == 4 for p in arm["points"])
        assert arm["vs_student"] is not None and arm["vs_teacher"] is not None
    assert arms["d"]["points"][1]["cpu_seconds"] == arms["b"]["points"][1]["cpu_seconds"]  # (d) starts with (b)'s cost
    assert arms["b"]["stages"]["sft"]["counts"]["kept"] > 0
    run_config = (out / "c" / "run" / "config.yaml").read_text()
    assert "drop_zero_variance_groups: false" in run_config and str(tiny_model_dir) in run_config
    assert "lr: 0.005" in (out / "a" / "run" / "config.yaml").read_text()  # the overrides reach the GRPO runs
    for path in ("results.md", "accuracy_vs_cpu.png", "compare/a.md", "compare/d.md", "student/shrink.json", "eval/teacher.json"):
        assert (out / path).exists(), path
    text = (out / "results.md").read_text()
    assert "(c) on-policy distillation" in text and "teacher's RL run" in text and "95 % CI" in text
    assert results["student_cost"]["cpu_seconds"] > 0

    calls.clear()
    before = {p: p.stat().st_mtime_ns for p in (out / "eval").glob("*.json")}
    bench.main(argv)
    assert calls == []  # every stage and evaluation is already there
    assert before == {p: p.stat().st_mtime_ns for p in (out / "eval").glob("*.json")}
