"""Distillation against RL for a small student, in held-out accuracy per CPU minute.

    python bench/distill_vs_rl.py --recipe recipes/r1zero_cpu.yaml \\
        --teacher runs/chain3b/run/checkpoints/step-000060 --student runs/shrunk --out runs/distill_vs_rl \\
        [--arms a,b,c,d] [--steps N] [--save-every K] [--problems N] [--teacher-run runs/chain3b] [key=value ...]

The student is an already shrunk and healed checkpoint (`rl-reasoning shrink`); `--shrink-from MODEL`
makes it first, into OUT/student (with `--exclude-recipe RECIPE`, so no held-out question is
healed on), and times it. The teacher is the RL-trained model of the same recipe. Four arms:

  (a) GRPO on the student from scratch: `rl-reasoning train RECIPE model.name=STUDENT`;
  (b) rejection-sampled SFT from the teacher: `rl-reasoning distill --teacher T --student S --no-eval`
      (its flags: `--sft-args "--problems 128 --samples 8"`);
  (c) on-policy distillation from the teacher: `rl-reasoning train RECIPE model.name=STUDENT
      distill.teacher=T grpo.drop_zero_variance_groups=false grpo.dynamic_sampling=false
      grpo.importance_sampling_level=token` (the settings the config refuses with a teacher are turned
      off; further keys for this arm only: `--onpolicy distill.task_coef=1`);
  (d) (b), then (a) started from (b)'s student.

Every stage is a subprocess `python -m rl_reasoning ...`. The GRPO runs have evaluation during
training off and save a checkpoint every `--save-every` steps (default: the recipe's `save_every`),
all kept. Each point of a curve (the student, (b)'s student, every checkpoint) and the teacher are
scored with `rl-reasoning eval --recipe RECIPE --model M --out OUT/eval/NAME.json [--problems N]`:
the same held-out problems, prompt and scorer everywhere. The final model of each arm is compared
with the student and with the teacher by the paired bootstrap of `rl-reasoning eval --compare`
(`rl_reasoning.results.compare`, called in-process; its full output goes to OUT/compare/ARM.md).
Key=value overrides apply to the GRPO runs (a), (c) and (d) only.

How costs are counted. Around each subprocess: wall time, and CPU time (user + system) from
`resource.getrusage(RUSAGE_CHILDREN)` deltas, so model loading, the teacher's sampling ((b), (d))
and the teacher's scoring ((c)) count, and any reward subprocesses the stage waited for. Costs
accumulate along an arm: (d) = (b)'s whole `distill` run + its own GRPO run. A GRPO run is one
process, so its cost is split over its checkpoints in proportion to wall time: set-up (the wall time
not spent in steps, from `time/step` in the run's metrics.jsonl) counts before step 1, then each
step's wall time; CPU is split in the same proportion. Evaluations are measurement, not training:
their cost is reported apart and is not on the curves. Making the student (shrink) is a cost common
to all arms, reported apart; so is the teacher's RL run, which `--teacher-run` (a bench/learning.py
output: learning.json, timing.json, run/metrics.jsonl) adds as its own curve; its CPU minutes are
estimated as wall × cores (bench/learning.py records wall time only), an upper bound on a machine
whose cores it had to itself.

Resuming. Each finished stage leaves OUT/costs/STAGE.json and is not run again; each evaluation
leaves its file. A rerun with the same command continues where the last one stopped: an
interrupted GRPO run continues from its last checkpoint with `resume=true`, an interrupted
`distill` or `shrink` starts again (its partial folder is moved to NAME.incomplete). Only the
attempt that finished a stage is counted in its cost (a killed parent cannot measure its child).

Outputs: OUT/results.md (per-arm summary with the paired intervals, then every point),
OUT/results.json and OUT/accuracy_vs_cpu.png.

Where this departs from DeepSeek-R1's distillation (§2.4, §4.1): R1 fine-tuned dense 1.5B-70B
students on ~800k curated samples of a 671B teacher, by SFT only, and compared this with RL run on
the 32B base at great cost (distillation won); RL after distillation, our (d), was left open. Here
the teacher is a 135M model trained by R1-Zero-style GRPO on one task, the student is that model's
base with layers dropped (docs/distillation.md: halved to 81M, or 28 of 30 layers kept), the SFT data is a few hundred filtered
samples of the same task, and (c), on-policy distillation (Tinker's per-token reverse KL), is not
in the paper. Everything runs on the CPU the costs are measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ARMS = {
    "a": "(a) GRPO from the student",
    "b": "(b) rejection-sampled SFT",
    "c": "(c) on-policy distillation",
    "d": "(d) SFT, then GRPO",
}
ARM_STYLE = {"a": "o-", "b": "s-", "c": "^-", "d": "D--"}  # matplotlib format strings
TEACHER_OFF = ("grpo.drop_zero_variance_groups=false", "grpo.dynamic_sampling=false", "grpo.importance_sampling_level=token")


# ---------------------------------------------------------------- running and timing subprocesses

def rl_reasoning(*args: str) -> dict:
    """Run `python -m rl_reasoning ARGS`; its wall and CPU seconds (this process's waited-for children)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-m", "rl_reasoning", *args], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(cpu, 2)}


def _move_aside(path: Path) -> None:
    if path.exists():
        aside = path.with_name(path.name + ".incomplete")
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
        print(f"{path} was left unfinished by an earlier attempt; moved to {aside}")


def stage(out: Path, name: str, kind: str, args: list[str], target: Path) -> dict:
    """Run a training stage once. OUT/costs/NAME.json (its cost and command) marks it finished.
    kind "train": an unfinished run with a checkpoint continues with resume=true; "fresh": an
    unfinished `target` is moved aside and the stage starts again."""
    record = out / "costs" / f"{name}.json"
    if record.exists():
        return json.loads(record.read_text())
    if kind == "train" and any((target / "checkpoints").glob("step-*")):
        args = [*args, "resume=true"]
        print(f"{name}: continuing {target} from its last checkpoint")
    else:
        _move_aside(target)
    cost = rl_reasoning(*args)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({**cost, "command": ["python", "-m", "rl_reasoning", *args]}, indent=1))
    return {**cost, "command": args}


def evaluate(out: Path, name: str, recipe: str, model: str, problems: int | None) -> dict:
    """`rl-reasoning eval` of one model, once; its metrics. The cost goes to OUT/costs/eval-NAME.json."""
    path = out / "eval" / f"{name}.json"
    try:
        return json.loads(path.read_text())["metrics"]
    except (OSError, ValueError, KeyError):
        pass  # not there, or cut short by an interruption
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = ["--problems", str(problems)] if problems else []
    cost = rl_reasoning("eval", "--recipe", recipe, "--model", model, "--out", str(path), *extra)
    (out / "costs").mkdir(parents=True, exist_ok=True)
    (out / "costs" / f"eval-{name}.json").write_text(json.dumps(cost))
    return json.loads(path.read_text())["metrics"]


# ---------------------------------------------------------------- cost accounting (pure)

def step_seconds(run_dir: Path) -> dict[int, float]:
    """Wall seconds of each step of a run, from `time/step` in metrics.jsonl (the last record of a
    step wins, as after a resume; unreadable lines are skipped)."""
    seconds = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                seconds[int(record["step"])] = float(record["time/step"])
            except (ValueError, KeyError, TypeError):
                continue
    return seconds


def split_cost(cost: dict, steps: list[int], seconds: dict[int, float]) -> dict[int, dict]:
    """A run's cost up to each step in `steps`: set-up (wall not spent in steps) first, then each
    step's wall time; CPU in the same proportion. Linear in the step when step times are missing."""
    wall, cpu = cost["wall_seconds"], cost["cpu_seconds"]
    last = max(steps)
    if not all(s in seconds for s in range(1, last + 1)):
        fractions = {s: s / last for s in steps}
    else:
        in_steps = sum(seconds[s] for s in range(1, last + 1))
        setup = max(0.0, wall - in_steps)
        total = setup + in_steps
        fractions = {s: (setup + sum(seconds[i] for i in range(1, s + 1))) / total if total > 0 else s / last for s in steps}
    return {s: {"cpu_seconds": cpu * f, "wall_seconds": wall * f} for s, f in fractions.items()}


def checkpoint_points(run_dir: Path, cost: dict, offset: dict, label: str) -> list[dict]:
    """One point per checkpoint of a GRPO run: its model and cumulative cost (offset = the arm's cost before the run)."""
    checkpoints = {int(c.name.split("-")[1]): c for c in (run_dir / "checkpoints").glob("step-*") if c.name.split("-")[1].isdigit()}
    if not checkpoints:
        raise SystemExit(f"no checkpoints under {run_dir / 'checkpoints'}")
    split = split_cost(cost, sorted(checkpoints), step_seconds(run_dir))
    return [{"label": f"{label} step {s}", "model": str(checkpoints[s]), "eval": f"{run_dir.parent.name}-step-{s:06d}",
             "cpu_seconds": offset["cpu_seconds"] + split[s]["cpu_seconds"],
             "wall_seconds": offset["wall_seconds"] + split[s]["wall_seconds"]} for s in sorted(checkpoints)]


# ---------------------------------------------------------------- comparisons and tables (pure)

PAIRED_ROW = re.compile(r"^\| greedy pass@1 \| ([-+\d.]+)% \| ([-+\d.]+)% \| ([-+\d.]+)% \| \[([-+\d.]+)%, ([-+\d.]+)%\] \|$", re.M)


def parse_compare(text: str) -> dict | None:
    """The greedy pass@1 row of `rl-reasoning eval --compare`'s paired table: A, B, B - A and its 95 % CI, as fractions."""
    m = PAIRED_ROW.search(text)
    if m is None:
        return None
    a, b, diff, lo, hi = (float(x) / 100 for x in m.groups())
    return {"a": a, "b": b, "diff": diff, "lo": lo, "hi": hi}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _ci(c: dict | None) -> str:
    return "–" if c is None else f"{100 * c['diff']:+.1f} [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}]"


def _minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f}"


def summary_table(arms: dict, teacher: dict) -> str:
    """One row per arm: final accuracy, cumulative CPU and wall minutes, and the paired differences."""
    lines = ["| arm | final held-out accuracy | CPU min | wall min | CPU min incl. the teacher's RL | vs the student: Δ points [95 % CI] "
             "| vs the teacher: Δ points [95 % CI] |", "|---|---|---|---|---|---|---|"]
    teacher_cpu = teacher.get("train_cpu_seconds")
    for key, arm in arms.items():
        last = arm["points"][-1]
        with_teacher = None if key == "a" or teacher_cpu is None else last["cpu_seconds"] + teacher_cpu
        lines.append(f"| {ARMS[key]} | {_pct(last['accuracy'])} | {_minutes(last['cpu_seconds'])} | {_minutes(last['wall_seconds'])} | "
                     f"{'–' if key == 'a' else ('≤ ' if teacher.get('cpu_is_bound') else '') + _minutes(with_teacher)} | "
                     f"{_ci(arm.get('vs_student'))} | {_ci(arm.get('vs_teacher'))} |")
    return "\n".join(lines)


def points_table(arms: dict, teacher: dict) -> str:
    """Every evaluated point: arm, model, cumulative CPU and wall minutes, greedy accuracy and format rate."""
    lines = ["| arm | point | CPU min | wall min | held-out accuracy | format |", "|---|---|---|---|---|---|"]
    for key, arm in arms.items():
        for p in arm["points"]:
            lines.append(f"| {key} | {p['label']} | {_minutes(p['cpu_seconds'])} | {_minutes(p['wall_seconds'])} | "
                         f"{_pct(p['accuracy'])} | {_pct(p.get('format_rate'))} |")
    for p in teacher.get("curve", []):
        lines.append(f"| teacher's RL run | step {p['step']} | {'≤ ' if teacher.get('cpu_is_bound') else ''}{_minutes(p['cpu_seconds'])} | "
                     f"{_minutes(p['wall_seconds'])} | {_pct(p['accuracy'])} | {_pct(p.get('format_rate'))} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the teacher's own run

def teacher_curve(run: Path) -> dict:
    """The teacher's learning curve and cost from a bench/learning.py output directory."""
    learning = json.loads((run / "learning.json").read_text())
    timing = learning.get("timing") or {}
    if not timing and (run / "timing.json").exists():
        timing = json.loads((run / "timing.json").read_text())
    points = learning["points"]
    wall_minutes = timing.get("train_minutes")
    out = {"run": str(run), "curve": [], "train_wall_seconds": None, "train_cpu_seconds": None, "cpu_is_bound": False}
    if wall_minutes is None:
        return out
    wall = wall_minutes * 60
    if "cpu_minutes" in timing:
        cpu = timing["cpu_minutes"] * 60
    else:  # bench/learning.py times wall only: all cores busy is the most the run can have used
        cpu, out["cpu_is_bound"] = wall * _threads(run), True
    out["train_wall_seconds"], out["train_cpu_seconds"] = wall, cpu
    steps = [p["step"] for p in points if p["step"] > 0]
    split = split_cost({"wall_seconds": wall, "cpu_seconds": cpu}, steps, step_seconds(run / "run")) if steps else {}
    for p in points:
        cost = split.get(p["step"], {"cpu_seconds": 0.0, "wall_seconds": 0.0})
        out["curve"].append({"step": p["step"], "accuracy": p["accuracy"], "format_rate": p.get("format_rate"),
                             "problems": p.get("problems"), **cost})
    return out


def _threads(run: Path) -> int:
    try:
        import yaml

        threads = yaml.safe_load((run / "run" / "config.yaml").read_text()).get("threads")
    except (OSError, ValueError, AttributeError, ImportError):
        threads = None
    return int(threads or os.cpu_count() or 1)


# ---------------------------------------------------------------- the plot

def plot(arms: dict, teacher: dict, teacher_accuracy: float | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, (key, arm) in enumerate(arms.items()):
        xs = [p["cpu_seconds"] / 60 for p in arm["points"]]
        # (d) starts along (b)'s segment: a marker and a line style each, and earlier arms drawn on top
        ax.plot(xs, [100 * p["accuracy"] for p in arm["points"]], ARM_STYLE.get(key, "o-"), label=ARMS[key], zorder=10 - i)
    if teacher.get("curve"):
        xs = [p["cpu_seconds"] / 60 for p in teacher["curve"]]
        bound = "≤ " if teacher["cpu_is_bound"] else ""
        ax.plot(xs, [100 * p["accuracy"] for p in teacher["curve"]], "s--", color="gray",
                label=f"teacher's RL run from its base (x: {bound}CPU min)")
    if teacher_accuracy is not None:
        ax.axhline(100 * teacher_accuracy, color="black", linestyle=":", linewidth=1, label="teacher (same problems)")
    ax.set_xlabel("cumulative CPU minutes (training; evaluations not counted)")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the axes: never over a curve
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- the experiment

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/r1zero_cpu.yaml")
    p.add_argument("--teacher", required=True, help="the RL-trained teacher: a checkpoint, HF directory or built-in name")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--student", help="the shrunk and healed student (an `rl-reasoning shrink` output)")
    who.add_argument("--shrink-from", metavar="MODEL", help="make the student first: `rl-reasoning shrink --model MODEL --out OUT/student`")
    p.add_argument("--shrink-args", default="", help='extra `shrink` flags, one string (--keep every_other unless it has --keep, --drop-last or --drop-block)')
    p.add_argument("--out", required=True, help="output directory; rerunning the same command continues it")
    p.add_argument("--arms", default="a,b,c,d", help="comma-separated, from a,b,c,d (default all)")
    p.add_argument("--steps", type=int, help="GRPO steps of (a), (c), (d) (default: the recipe's max_steps)")
    p.add_argument("--save-every", type=int, help="checkpoint interval of the GRPO runs (default: the recipe's save_every, "
                   "else a fifth of the steps)")
    p.add_argument("--problems", type=int, help="held-out problems scored (default: the recipe's data.eval_size)")
    p.add_argument("--sft-args", default="",
                   help='`rl-reasoning distill` flags for (b), one string, e.g. "--problems 128 --samples 8" (one flag alone: --sft-args=--no-require-format)')
    p.add_argument("--onpolicy", action="append", default=[], metavar="KEY=VALUE", help="recipe override for (c) only, e.g. distill.task_coef=1")
    p.add_argument("--teacher-run", help="the teacher's bench/learning.py output directory: its curve and cost go beside the arms")
    p.add_argument("overrides", nargs="*", help="recipe overrides for the GRPO runs (a), (c), (d), key=value")
    args = p.parse_intermixed_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
        p.error(f"--arms: expected distinct letters from {','.join(ARMS)}, got {args.arms!r}")
    args.arms = [a for a in ARMS if a in arms]
    if args.steps is not None and args.steps < 1 or args.save_every is not None and args.save_every < 1 or args.problems is not None and args.problems < 1:
        p.error("--steps, --save-every and --problems must be >= 1")
    return args


def grpo_settings(args) -> list[str]:
    """max_steps, save_every (every checkpoint kept) and evaluation off, from the recipe and the flags."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from rl_reasoning.config import load_config

    cfg = load_config(args.recipe, list(args.overrides))  # checks the recipe and the overrides before anything runs
    steps = args.steps or cfg.max_steps
    every = args.save_every or cfg.save_every or max(1, steps // 5)
    return [f"max_steps={steps}", f"save_every={every}", f"save_total_limit={steps // every + 2}",
            "eval.every=0", "eval.at_start=false", "eval.at_end=false"]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe, teacher = args.recipe, args.teacher
    grpo = grpo_settings(args)
    (out / "command.json").write_text(json.dumps({"argv": sys.argv if argv is None else ["bench/distill_vs_rl.py", *argv]}, indent=1))

    student_cost = None
    if args.shrink_from:
        flags = shlex.split(args.shrink_args)
        if not {"--keep", "--drop-last", "--drop-block"} & set(flags):
            flags = ["--keep", "every_other", *flags]
        student_dir = out / "student"
        student_cost = stage(out, "shrink", "fresh", ["shrink", "--model", args.shrink_from, "--out", str(student_dir),
                                                      "--exclude-recipe", recipe, *flags], student_dir)
        student = str(student_dir)
    else:
        student = args.student

    zero = {"cpu_seconds": 0.0, "wall_seconds": 0.0}
    base = {"label": "student", "model": student, "eval": "student", **zero}

    def train(arm: str, model: str, extra: list[str]) -> tuple[Path, dict]:
        run_dir = out / arm / "run"
        cost = stage(out, f"{arm}-grpo", "train", ["train", recipe, f"model.name={model}", f"output_dir={run_dir}", *grpo,
                                                   *extra, *args.overrides, "--quiet"], run_dir)
        return run_dir, cost

    def sft() -> tuple[dict, dict]:
        target = out / "b" / "distill"
        cost = stage(out, "b-sft", "fresh", ["distill", "--recipe", recipe, "--teacher", teacher, "--student", student,
                                             "--out", str(target), "--no-eval", *shlex.split(args.sft_args)], target)
        point = {"label": "SFT student", "model": str(target / "student"), "eval": "b-sft",
                 "cpu_seconds": cost["cpu_seconds"], "wall_seconds": cost["wall_seconds"]}
        summary = json.loads((target / "summary.json").read_text())
        return point, {**cost, "counts": summary["counts"], "summary_cpu_seconds": summary["cpu_seconds"]}

    arms = {}
    for arm in args.arms:
        if arm == "a":
            run_dir, cost = train("a", student, [])
            arms["a"] = {"points": [base, *checkpoint_points(run_dir, cost, zero, "GRPO")], "stages": {"grpo": cost}}
        elif arm == "b":
            point, cost = sft()
            arms["b"] = {"points": [base, point], "stages": {"sft": cost}}
        elif arm == "c":
            extra = [f"distill.teacher={teacher}", *TEACHER_OFF, *args.onpolicy]
            run_dir, cost = train("c", student, extra)
            arms["c"] = {"points": [base, *checkpoint_points(run_dir, cost, zero, "on-policy")], "stages": {"onpolicy": cost}}
        else:
            point, sft_cost = sft()
            run_dir, cost = train("d", point["model"], [])
            arms["d"] = {"points": [base, point, *checkpoint_points(run_dir, cost, sft_cost, "GRPO")],
                         "stages": {"sft": sft_cost, "grpo": cost}}

    # held-out accuracy of every point, the teacher's on the same problems, and the paired comparisons
    for arm in arms.values():
        for p in arm["points"]:
            metrics = evaluate(out, p["eval"], recipe, p["model"], args.problems)
            p["accuracy"], p["format_rate"], p["problems"] = metrics.get("accuracy"), metrics.get("format_rate"), metrics.get("num_problems")
    teacher_metrics = evaluate(out, "teacher", recipe, teacher, args.problems)
    from rl_reasoning.results import compare

    (out / "compare").mkdir(exist_ok=True)
    for key, arm in arms.items():
        final = out / "eval" / f"{arm['points'][-1]['eval']}.json"
        texts = []
        for name, other in (("student", out / "eval" / "student.json"), ("teacher", out / "eval" / "teacher.json")):
            text = compare(str(other), str(final))
            arm[f"vs_{name}"] = parse_compare(text)
            texts.append(f"## {ARMS[key]}: A = the {name}, B = its final model\n\n{text}\n")
        (out / "compare" / f"{key}.md").write_text("\n".join(texts))

    teacher_run = teacher_curve(Path(args.teacher_run)) if args.teacher_run else {"curve": []}
    eval_cpu = sum(json.loads(f.read_text())["cpu_seconds"] for f in (out / "costs").glob("eval-*.json"))
    results = {
        "recipe": recipe, "teacher": teacher, "student": student, "problems": teacher_metrics.get("num_problems"),
        "grpo_settings": grpo, "overrides": args.overrides, "sft_args": args.sft_args, "onpolicy": args.onpolicy,
        "student_cost": student_cost, "teacher_accuracy": teacher_metrics.get("accuracy"), "teacher_run": teacher_run,
        "evaluation_cpu_seconds": eval_cpu, "cores": os.cpu_count(), "arms": arms,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    title = f"{Path(recipe).name}: {results['problems']} held-out problems, {os.cpu_count()} cores"
    plot(arms, teacher_run, teacher_metrics.get("accuracy"), out / "accuracy_vs_cpu.png", title)
    text = _report(results)
    (out / "results.md").write_text(text)
    print(text)
    print(f"written: {out / 'results.md'}, {out / 'results.json'}, {out / 'accuracy_vs_cpu.png'}")
    return results


def _report(r: dict) -> str:
    lines = [f"# Distillation vs RL: {r['recipe']}", "",
             f"- teacher: `{r['teacher']}`, held-out accuracy {_pct(r['teacher_accuracy'])} on the same {r['problems']} problems",
             f"- student: `{r['student']}`" + ("" if r["student_cost"] is None else
                                               f", made by `shrink` for {_minutes(r['student_cost']['cpu_seconds'])} CPU min "
                                               f"({_minutes(r['student_cost']['wall_seconds'])} wall), common to all arms and not on the curves"),
             f"- GRPO runs: {' '.join(r['grpo_settings'] + r['overrides'])}; (b): `distill {r['sft_args']}`; (c) extra: "
             f"{' '.join(r['onpolicy']) or 'none'}",
             f"- {r['cores']} cores; CPU minutes are user + system time of the training subprocesses, cumulative along each arm; "
             f"evaluations ({_minutes(r['evaluation_cpu_seconds'])} CPU min in all) are not counted"]
    t = r["teacher_run"]
    if t.get("train_cpu_seconds") is not None:
        bound = "≤ " if t["cpu_is_bound"] else ""
        lines.append(f"- the teacher's own RL run (`{t['run']}`): {_minutes(t['train_wall_seconds'])} wall min, "
                     f"{bound}{_minutes(t['train_cpu_seconds'])} CPU min" + (" (wall × cores)" if t["cpu_is_bound"] else "")
                     + f"; its curve is its own evaluation, on {(t['curve'] or [{}])[0].get('problems') or 'its'} held-out problems")
    lines += ["", "## Final models", "", summary_table(r["arms"], t), "",
              "Δ: paired difference in greedy accuracy, percentage points, with the 95 % bootstrap interval of "
              "`rl-reasoning eval --compare` (full output in compare/ARM.md).", "",
              "## Every point", "", points_table(r["arms"], t), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
