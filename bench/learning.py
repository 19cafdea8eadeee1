"""The R1-Zero learning curve: train a recipe, then score its checkpoints on held-out problems.

    python bench/learning.py --recipe recipes/r1zero_cpu.yaml --out runs/learning [--problems 200] [key=value ...]

1. Trains with `rl-reasoning train RECIPE` (evaluation during training off, a checkpoint every
   `save_every` steps) and times it: the wall time reported is training only.
2. Scores the base model and every checkpoint with `rl-reasoning eval --recipe RECIPE` on the
   recipe's held-out problems: the same problems, prompt and scorer at every point.
3. Compares the base model and the last checkpoint with `rl-reasoning eval --compare` (paired
   bootstrap 95 % interval).
4. With an environment (`rollout.environment`), compares the last checkpoint's first-turn answers
   with its final answers, paired over problems (the first turn's verdicts are the environment's,
   recorded per problem by the same evaluation).
5. Writes `learning.md` (a table per evaluation point: greedy accuracy, format rate, completion
   length, words in the reasoning section, reflection rate; for code tasks the runnable-program
   rate instead of the think/answer columns; with an environment the first-turn accuracy and the
   second-turn fix rate), `learning.png` and `learning.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

COLUMNS = (("accuracy", "accuracy", True), ("format_rate", "format", True), ("runnable_rate", "runnable", True), ("mean_length", "tokens", False),
           ("think_words", "reasoning words", False), ("reflection_rate", "reflection rate", True),
           ("env/first_turn_accuracy", "first turn", True), ("env/second_turn_fix_rate", "second turn fixes", True),
           ("tools/use_frac", "tool use", True))
OPTIONAL = ("runnable_rate", "env/first_turn_accuracy", "env/second_turn_fix_rate", "tools/use_frac")  # shown when measured
CODE_HIDES = ("format_rate", "think_words", "reflection_rate")  # think/answer columns, meaningless for code


def rl_reasoning(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rl_reasoning", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/r1zero_cpu.yaml")
    parser.add_argument("--out", required=True, help="new output directory")
    parser.add_argument("--problems", type=int, help="held-out problems (default: the recipe's data.eval_size)")
    parser.add_argument("--skip-train", action="store_true", help="score an existing OUT/run")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for training, key=value")
    args = parser.parse_args()
    out = Path(args.out)
    run_dir = out / "run"
    timing = {}
    if not args.skip_train:
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists; choose a new --out or pass --skip-train")
        start = time.perf_counter()
        rl_reasoning("train", args.recipe, f"output_dir={run_dir}", "eval.at_start=false", "eval.at_end=false", "eval.every=0",
                     *args.overrides, "--quiet")  # positionals together: argparse does not take them after an option
        timing["train_minutes"] = (time.perf_counter() - start) / 60
        (out / "timing.json").write_text(json.dumps(timing))
    elif (out / "timing.json").exists():
        timing = json.loads((out / "timing.json").read_text())

    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    if not checkpoints:
        raise SystemExit(f"no checkpoints under {run_dir / 'checkpoints'}")
    recipe_model = _recipe_model(run_dir)
    points = [(0, recipe_model)] + [(int(c.name.split("-")[1]), str(c)) for c in checkpoints]
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for step, model in points:
        path = eval_dir / f"step-{step:06d}.json"
        if not path.exists():
            extra = ["--problems", str(args.problems)] if args.problems else []
            rl_reasoning("eval", "--recipe", args.recipe, "--model", model, "--out", str(path), *extra)
        metrics = json.loads(path.read_text())["metrics"]
        rows.append({"step": step, **{k: metrics.get(k) for k, _, _ in COLUMNS}, "problems": metrics.get("num_problems")})
    compare = subprocess.run([sys.executable, "-m", "rl_reasoning", "eval", "--compare", str(eval_dir / "step-000000.json"),
                              str(eval_dir / f"step-{points[-1][0]:06d}.json")], check=True, capture_output=True, text=True).stdout
    turns = _first_turn_vs_final(eval_dir / f"step-{points[-1][0]:06d}.json")
    machine = f"{_cpu_model()}, {os.cpu_count()} cores, torch threads = cores"
    table = _table(rows)
    minutes = timing.get("train_minutes")
    text = (f"# Learning curve: {args.recipe}\n\nmachine: {machine}; training wall time: "
            f"{'n/a' if minutes is None else f'{minutes:.1f} min'}; held-out problems: {rows[0]['problems']}\n\n{table}\n\n"
            f"{_phases(run_dir)}## Base model vs last checkpoint\n\n{compare}\n{turns}")
    (out / "learning.md").write_text(text)
    (out / "learning.json").write_text(json.dumps({"recipe": args.recipe, "timing": timing, "points": rows}, indent=1))
    _plot(rows, out / "learning.png", args.recipe, minutes)
    print(text)
    print(f"written: {out / 'learning.md'}, {out / 'learning.png'}")


def _first_turn_vs_final(path: Path) -> str:
    """With an environment: the checkpoint's first answers against its final ones, paired (`eval
    --compare` on a copy of the result whose per-problem `correct` is the first turn's verdict)."""
    result = json.loads(path.read_text())
    if "env/first_turn_accuracy" not in result["metrics"]:
        return ""
    first = dict(result, model=result["model"] + " (first turn)",
                 metrics={"accuracy": result["metrics"]["env/first_turn_accuracy"]},
                 per_problem=[dict(r, correct=bool(r.get("verdicts") and r["verdicts"][0])) for r in result["per_problem"]])
    first_path = path.with_name(path.stem + "-first_turn.json")
    first_path.write_text(json.dumps(first))
    out = subprocess.run([sys.executable, "-m", "rl_reasoning", "eval", "--compare", str(first_path), str(path)],
                         check=True, capture_output=True, text=True).stdout
    return f"\n## Last checkpoint: first turn (A) vs final answer after the environment's feedback (B)\n\n{out}\n"


def _phases(run_dir: Path) -> str:
    """Where the training steps' time went (sums over the run's metrics.jsonl)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return ""
    steps = [m for m in map(json.loads, path.read_text().splitlines()) if "time/step" in m]
    total = sum(m["time/step"] for m in steps)
    if not total:
        return ""
    cells = [f"{phase} {sum(m.get(f'time/{phase}', 0.0) for m in steps):.0f} s ({sum(m.get(f'time/{phase}', 0.0) for m in steps) / total:.1%})"
             for phase in ("generation", "reward", "update")]
    worst = max(m.get("time/reward", 0.0) / m["time/step"] for m in steps)
    return (f"Time in {len(steps)} steps ({total:.0f} s, from run/metrics.jsonl): {', '.join(cells)}; "
            f"the reward's largest share of one step: {worst:.1%}.\n\n{_step_table(steps)}\n\n")


def _step_table(steps: list[dict]) -> str:
    """Per training step (sampled completions): reward, accuracy, format — for code the runnable-program
    and no-program rates and the share passing the shown examples but failing a hidden test — zero-variance
    groups, and the step's and the reward's seconds."""
    code = next((k[: -len("runnable_frac")] for k in steps[0] if k.endswith("/runnable_frac")), None)
    cols = [("reward/mean", "reward", False), ("accuracy", "accuracy", True)]
    cols += [(code + "runnable_frac", "runnable", True), (code + "no_program_frac", "no program", True),
             (code + "examples_only_frac", "examples only", True)] if code else \
        [("format_rate", "format", True)]
    cols += [(k, label, True) for k, label in (("env/first_turn_accuracy", "first turn"), ("env/second_turn_fix_rate", "second turn fixes"),
                                                ("tools/use_frac", "tool use")) if any(k in m for m in steps)]
    cols += [("groups/zero_std_frac", "zero-variance groups", True), ("time/step", "step s", False), ("time/reward", "reward s", False)]
    lines = ["Per training step (the sampled completions):", "", "| step | " + " | ".join(c[1] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for m in steps:
        cells = ["–" if m.get(k) is None else f"{m[k]:.1%}" if rate else f"{m[k]:.2f}" if k == "reward/mean" else f"{m[k]:.1f}"
                 for k, _, rate in cols]
        lines.append(f"| {m['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _recipe_model(run_dir: Path) -> str:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name"]


def _columns(rows: list[dict]) -> list[tuple]:
    """The table's columns: the optional ones only when measured; for code, no think/answer columns."""
    code = any(r.get("runnable_rate") is not None for r in rows)
    return [c for c in COLUMNS if not (code and c[0] in CODE_HIDES) and (c[0] not in OPTIONAL or any(r.get(c[0]) is not None for r in rows))]


def _table(rows: list[dict]) -> str:
    columns = _columns(rows)
    lines = ["| step | " + " | ".join(label for _, label, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for key, _, rate in columns:
            v = r[key]
            cells.append("–" if v is None else f"{v:.1%}" if rate else f"{v:.1f}")
        lines.append(f"| {r['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path, recipe: str, minutes: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [100 * r["accuracy"] for r in rows], "o-", label="held-out greedy accuracy (%)")
    code = any(r.get("runnable_rate") is not None for r in rows)
    if code:
        ax.plot(steps, [100 * r["runnable_rate"] for r in rows], "s--", label="runnable program (%)")
    else:
        ax.plot(steps, [100 * r["format_rate"] for r in rows], "s--", label="format rate (%)")
    for key, style, label in (("env/first_turn_accuracy", "d-", "first-turn accuracy (%)"), ("env/second_turn_fix_rate", "v-", "second turn fixes (%)")):
        if any(r.get(key) is not None for r in rows):
            ax.plot(steps, [100 * (r[key] or 0) for r in rows], style, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    words = ax.twinx()
    key, label = ("mean_length", "completion tokens") if code else ("think_words", "reasoning words")
    words.plot(steps, [r[key] or 0 for r in rows], "^:", color="gray", label=label)
    words.set_ylabel("tokens" if code else "words in <think>")
    words.set_ylim(bottom=0, top=max(10.0, 1.2 * max(r[key] or 0 for r in rows)))
    handles = ax.get_legend_handles_labels()[0] + words.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)
    title = Path(recipe).name + ("" if minutes is None else f" — {minutes:.0f} min of training")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
