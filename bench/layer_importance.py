"""Which decoder layers can a model lose and keep a task? Greedy accuracy on the recipe's *training*
problems of the model with each given set of layers dropped, unhealed.

    python bench/layer_importance.py --recipe recipes/r1zero_cpu.yaml --out runs/layers            # each single layer
    python bench/layer_importance.py --recipe recipes/r1zero_cpu.yaml --out runs/layers2 --drop 9 --drop 3,9 --drop 13-15

Why: `rl-reasoning shrink` chooses layers by hand (`--keep`, `--drop-last`) or by a task-agnostic
distance (`--drop-block`, Gromov et al.). On SmolLM2-135M and 3-term addition neither kept the skill:
students of 21-27 layers scored 2.5-6.5 % held-out against the base's 31 %, healed or not, and
dropping layer 13 alone (inside the block `--drop-block 3` picks) costs most of it. This script measures instead:
each candidate is the source with the listed layers removed (`shrink.prune_layers`, weights bit for
bit), scored as `rl-reasoning eval` scores (same prompt, greedy settings and accuracy reward).
The layers found here then go to `rl-reasoning shrink --keep`.

The problems are the first `--problems` distinct questions of the recipe's training stream that
are not held-out questions, so the choice never sees the held-out set that the student is later
scored on. The model is `--model`, else the recipe's `model.name`.

Outputs: OUT/layer_importance.json (settings, the problems' questions, one row per candidate:
dropped layers, accuracy, format rate, mean length, seconds) and OUT/layer_importance.md (the
table, sorted by accuracy). Rows are written as they finish; a rerun with the same OUT skips
candidates already scored.

Departures: Minitron ranks layers by the loss increase when each is removed, on calibration text,
and Gromov et al. by angular distance; here the measure is the task itself, greedy accuracy on a
few dozen training problems, so it is noisy (a binomial standard error of ~8 points at 32 problems
and 30 %) and effects of several layers are not additive (measure sets with `--drop`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rl_reasoning.errors import UserError  # noqa: E402
from rl_reasoning.untrusted import terminal_safe  # noqa: E402


def parse_drop(spec: str, num_layers: int) -> list[int]:
    """Layer indices to drop, from "9", "3,9" or "13-15"; increasing, distinct, in range, and not all."""
    from rl_reasoning.shrink import parse_layer_indices

    dropped = parse_layer_indices(spec, f"--drop {spec!r}")
    if not dropped:
        raise UserError(f"--drop {spec!r}: no layers given")
    if len(set(dropped)) != len(dropped):
        raise UserError(f"--drop {spec!r}: a layer is listed twice")
    bad = [i for i in dropped if not 0 <= i < num_layers]
    if bad:
        raise UserError(f"--drop {spec!r}: layer {bad[0]} is out of range (the model has {num_layers} layers, 0-{num_layers - 1})")
    if len(dropped) == num_layers:
        raise UserError(f"--drop {spec!r}: drops all {num_layers} layers")
    return sorted(dropped)


def training_problems(task, count: int) -> list[dict]:
    """The first `count` distinct training problems whose question is not held out."""
    problems, seen = [], set()
    for problem in task.train:
        if len(problems) == count:
            break
        if task.is_held_out(problem) or problem["question"] in seen:
            continue
        seen.add(problem["question"])
        problems.append(problem)
    if len(problems) < count:
        raise UserError(f"--problems {count}: the recipe's training set has only {len(problems)} problems outside the held-out set")
    return problems


def label(dropped: list[int] | None) -> str:
    return "none (the source)" if dropped is None else ",".join(map(str, dropped))


def write_table(out: Path, result: dict) -> None:
    rows = sorted(result["rows"], key=lambda r: -r["accuracy"])
    base = next((r["accuracy"] for r in rows if r["dropped"] is None), None)
    lines = [f"# Layer importance: {result['model']} on {result['recipe']}", "",
             f"Greedy accuracy on {len(result['questions'])} training problems (no held-out question), each candidate "
             "unhealed; sorted by accuracy.", "",
             "| dropped layers | layers left | accuracy | Δ vs the source, points | format | mean length |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        delta = "" if base is None or r["dropped"] is None else f"{100 * (r['accuracy'] - base):+.1f}"
        lines.append(f"| {label(r['dropped'])} | {r['layers_left']} | {100 * r['accuracy']:.1f} % | {delta} | "
                     f"{100 * r['format_rate']:.1f} % | {r['mean_length']:.1f} |")
    (out / "layer_importance.md").write_text("\n".join(lines) + "\n")


def run(args) -> dict:
    import torch

    from rl_reasoning.config import load_config
    from rl_reasoning.evaluation import EvalSettings, evaluate
    from rl_reasoning.models import eos_token_ids, load_model
    from rl_reasoning.reward_runner import accuracy_runner
    from rl_reasoning.rollout import RolloutEngine
    from rl_reasoning.runtime import configure_cpu, default_device, quiet_library_progress_bars, seed_everything
    from rl_reasoning.shrink import decoder_layers, prune_layers
    from rl_reasoning.tasks import load_task

    if args.problems < 1:
        raise UserError("--problems must be >= 1")
    cfg = load_config(args.recipe, [])
    model_name = args.model or cfg.model.name
    quiet_library_progress_bars()
    configure_cpu(cfg.threads)
    seed_everything(cfg.seed)
    problems = training_problems(load_task(cfg.data), args.problems)
    loaded = load_model(model_name, default_device(), "float32", cfg.model.attn_implementation, cfg.model.cache_dir)
    loaded.model.eval()
    num_layers = len(decoder_layers(loaded.model))
    candidates = [None] + ([parse_drop(s, num_layers) for s in args.drop] if args.drop else [[i] for i in range(num_layers)])
    tok = loaded.tokenizer
    eos = eos_token_ids(loaded.model, tok)
    scorer, settings = accuracy_runner(cfg), EvalSettings.from_config(cfg)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "layer_importance.json"
    result = {"recipe": args.recipe, "model": model_name, "layers": num_layers, "questions": [p["question"] for p in problems], "rows": []}
    try:
        previous = json.loads(path.read_text())
        if previous.get("questions") == result["questions"] and previous.get("model") == model_name:
            result["rows"] = previous["rows"]
    except (OSError, ValueError):
        pass
    done = {label(r["dropped"]) for r in result["rows"]}
    for dropped in candidates:
        if label(dropped) in done:
            continue
        model = loaded.model if dropped is None else prune_layers(loaded.model, [i for i in range(num_layers) if i not in dropped]).eval()
        start = time.perf_counter()
        with torch.no_grad():
            metrics, _ = evaluate(RolloutEngine(model, tok, eos, tok.pad_token_id), tok, problems, cfg.prompt, scorer, settings, 0)
        row = {"dropped": dropped, "layers_left": num_layers - len(dropped or []), "accuracy": metrics["eval/accuracy"],
               "format_rate": metrics["eval/format_rate"], "mean_length": metrics["eval/mean_length"],
               "seconds": round(time.perf_counter() - start, 2)}
        result["rows"].append(row)
        done.add(label(dropped))
        print(f"drop {label(dropped)}: {100 * row['accuracy']:.1f} % ({row['seconds']:.0f} s)", flush=True)
        path.write_text(json.dumps(result, indent=1))
        write_table(out, result)
    path.write_text(json.dumps(result, indent=1))
    write_table(out, result)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="the task, prompt, accuracy reward and greedy settings")
    p.add_argument("--model", help="source model (default: the recipe's model.name)")
    p.add_argument("--out", required=True, help="output directory; a rerun skips candidates already scored")
    p.add_argument("--problems", type=int, default=32, help="training problems scored (default 32)")
    p.add_argument("--drop", action="append", metavar="LAYERS",
                   help="a set of layers to drop, e.g. 9, 3,9 or 13-15; repeatable (default: each single layer)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except UserError as e:
        print(terminal_safe(f"error: {e}"), file=sys.stderr)  # messages may quote the command line
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
