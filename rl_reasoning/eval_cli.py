"""`rl-reasoning eval`: score a model (ours, the base model, any HF dir) on a task's held-out set.

    rl-reasoning eval --model runs/x/checkpoints/step-000012 --task basic_arithmetic --n 8 --k 1,4,8
    rl-reasoning eval --recipe recipes/quickstart.yaml --model smollm2-135m-instruct --out before.json
    rl-reasoning eval --compare before.json after.json

The held-out problems are the ones the trainer holds out for the same data config (same
seed), so a recipe's "before" and "after" are scored on the same problems. Without a recipe,
the prompt asks for <think>/<answer> with a `<think>` prefill, and the accuracy reward is the
task's verifier (reasoning_gym), `code` for HumanEval, or `math` for files. `--compare` prints
both results and the paired difference with a 95 % bootstrap confidence interval over problems.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import Config, RewardSpec, load_config
from .errors import UserError

DEFAULT_SYSTEM_PROMPT = (
    "Solve the problem. First reason briefly inside <think>...</think>, then write the final answer "
    "inside <answer>...</answer>."
)
BOOTSTRAP_SAMPLES = 2000


def build_config(args) -> Config:
    overrides = list(args.overrides)
    if args.recipe is None:
        overrides = [f"prompt.system_prompt={DEFAULT_SYSTEM_PROMPT}", "prompt.prefill=<think>", *overrides]
    cfg = load_config(args.recipe, overrides)
    if args.model:
        cfg.model.name = args.model
    keep_rewards = args.recipe is not None
    if args.task:
        if args.task == "humaneval":
            cfg.data.source = "humaneval"
        elif args.task.endswith((".jsonl", ".json", ".csv", ".parquet")):
            cfg.data.source, cfg.data.path = "file", args.task
        else:
            if args.task != cfg.data.task or cfg.data.mixture:
                cfg.data.task_config, cfg.data.mixture = {}, []  # the recipe's task settings belong to its task
            cfg.data.source, cfg.data.task = "reasoning_gym", args.task
        # a recipe's task-agnostic reasoning-gym verifier still applies to another reasoning-gym task
        keep_rewards = keep_rewards and cfg.data.source == "reasoning_gym" and cfg.accuracy_reward_name == "reasoning_gym"
    if not keep_rewards:
        default = {"humaneval": "code", "reasoning_gym": "reasoning_gym"}.get(cfg.data.source, "math")
        cfg.rewards, cfg.accuracy_reward, cfg.reward_weights = [RewardSpec(default)], None, None
        if cfg.data.source == "humaneval":
            cfg.prompt.system_prompt, cfg.prompt.prefill, cfg.rollout.stop = None, "", []
    if args.problems is not None:
        cfg.data.eval_size = args.problems
    if args.max_new_tokens is not None:
        cfg.eval.max_new_tokens = args.max_new_tokens
    cfg.validate()
    return cfg


def run_eval(args) -> dict:
    import torch

    from .models import eos_token_ids, load_model
    from .reward_runner import RewardRunner
    from .rollout import RolloutEngine
    from .tasks import load_task
    from .trainer import quiet_library_progress_bars
    from .evaluation import answer_fallback, evaluate
    from .traces import Analyzer

    cfg = build_config(args)
    ks = tuple(int(k) for k in args.k.split(",")) if args.k else ()
    if any(k > args.n for k in ks):
        raise UserError(f"--k: every k must be <= --n ({args.n})")
    quiet_library_progress_bars()
    if not torch.cuda.is_available():
        torch.set_num_threads(cfg.threads or torch.get_num_threads())
    data_cfg = cfg.data
    problems = load_task(data_cfg, allow_empty_train=True).held_out  # e.g. all 164 HumanEval problems
    spec = cfg.rewards[[r.name for r in cfg.rewards].index(cfg.accuracy_reward_name)]
    scorer = RewardRunner([RewardSpec(spec.name, 1.0, spec.kwargs)], [1.0])
    loaded = load_model(cfg.model.name, "cuda" if torch.cuda.is_available() else "cpu", cfg.model.dtype, cfg.model.attn_implementation, cfg.model.cache_dir)
    engine = RolloutEngine(loaded.model, loaded.tokenizer, eos_token_ids(loaded.model, loaded.tokenizer), loaded.tokenizer.pad_token_id)
    metrics, records = evaluate(
        engine, loaded.tokenizer, problems, cfg.prompt, scorer,
        cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens, list(cfg.rollout.stop), args.batch_size or cfg.eval.batch_size, 0,
        n=args.n if ks else 0, ks=ks, temperature=args.temperature, top_p=cfg.rollout.top_p, seed=cfg.seed, answer_fallback=answer_fallback(scorer),
        analyzer=Analyzer(cfg.traces.reflection_markers, list(cfg.traces.extra_reflection_markers)),
    )
    task = data_cfg.task if data_cfg.source == "reasoning_gym" else (data_cfg.path or data_cfg.name or data_cfg.source)
    result = {
        "model": cfg.model.name,
        "task": task,
        "settings": {"n": args.n if ks else 0, "k": list(ks), "temperature": args.temperature, "top_p": cfg.rollout.top_p, "problems": len(problems),
                     "max_new_tokens": cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens, "seed": cfg.seed},
        "metrics": {k.removeprefix("eval/"): v for k, v in metrics.items()},
        "per_problem": records,
    }
    out = Path(args.out) if args.out else None
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    print(markdown_table([result]))
    if out:
        print(f"\nwritten: {out}")
    return result


METRIC_ORDER = ("accuracy", "pass@", "maj@", "format_rate", "sampled_format_rate", "mean_length", "think_words", "sampled_mean_length", "truncated_frac", "sampled_truncated_frac", "num_problems", "greedy_seconds", "sampled_seconds", "seconds")


def _metric_names(results: list[dict]) -> list[str]:
    names = {k for r in results for k in r["metrics"]}
    return sorted(names, key=lambda m: (next((i for i, p in enumerate(METRIC_ORDER) if m.startswith(p)), 99), m))


def markdown_table(results: list[dict]) -> str:
    header = "| metric | " + " | ".join(f"{r['model']} on {r['task']}" for r in results) + " |"
    lines = [header, "|---|" + "---|" * len(results)]
    for name in _metric_names(results):
        cells = []
        for r in results:
            v = r["metrics"].get(name)
            cells.append("" if v is None else f"{v:.1%}" if _is_rate(name) else f"{v:.1f}" if isinstance(v, float) else str(v))
        label = "greedy pass@1" if name == "accuracy" else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _is_rate(name: str) -> bool:
    return name == "accuracy" or name.startswith(("pass@", "maj@")) or name.endswith(("_rate", "_frac"))


def _per_problem(record: dict, metric: str) -> float | None:
    key = "correct" if metric == "accuracy" else metric
    value = record.get(key)
    return None if value is None else float(value)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a and its 95 % percentile-bootstrap interval (resampling problems)."""
    diff = b - a
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(BOOTSTRAP_SAMPLES, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare(path_a: str, path_b: str) -> str:
    results = []
    for p in (path_a, path_b):
        try:
            results.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"--compare: cannot read {p}: {e}") from None
    a, b = results
    by_question = {r["question"]: r for r in a["per_problem"]}
    pairs = [(by_question[r["question"]], r) for r in b["per_problem"] if r["question"] in by_question]
    if not pairs:
        raise UserError("--compare: the two results share no problems")
    lines = [markdown_table(results), "", f"paired over {len(pairs)} shared problems; 95 % CI from {BOOTSTRAP_SAMPLES} bootstrap resamples", "",
             "| metric | A | B | B − A | 95 % CI |", "|---|---|---|---|---|"]
    for name in _metric_names(results):
        if not (name == "accuracy" or name.startswith(("pass@", "maj@"))):
            continue
        values = [(_per_problem(x, name), _per_problem(y, name)) for x, y in pairs]
        values = [(x, y) for x, y in values if x is not None and y is not None]
        if not values:
            continue
        xa, xb = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        mean, lo, hi = paired_bootstrap(xa, xb)
        label = "greedy pass@1" if name == "accuracy" else name
        lines.append(f"| {label} | {xa.mean():.1%} | {xb.mean():.1%} | {mean:+.1%} | [{lo:+.1%}, {hi:+.1%}] |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a model on held-out problems (pass@k, maj@k, format, length)",
                        description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    ev.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    ev.add_argument("--model", help="built-in name, checkpoint / HF dir, .gguf file or Hub id (default: the recipe's)")
    ev.add_argument("--task", help="reasoning-gym task name, 'humaneval', or a data file")
    ev.add_argument("--recipe", help="take data, prompt and accuracy reward from this recipe")
    ev.add_argument("--n", type=int, default=8, help="samples per problem for pass@k / maj@k (default 8)")
    ev.add_argument("--k", default="", help="comma-separated k values, e.g. 1,4,8 (default: greedy only)")
    ev.add_argument("--temperature", type=float, default=0.6)
    ev.add_argument("--problems", type=int, help="held-out problems (default: the recipe's data.eval_size)")
    ev.add_argument("--max-new-tokens", type=int)
    ev.add_argument("--batch-size", type=int, help="completions generated together (default: eval.batch_size)")
    ev.add_argument("--out", help="write the JSON result here")
    ev.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two result files instead of evaluating")
    ev.set_defaults(func=main)


def main(args) -> int:
    if args.compare:
        print(compare(*args.compare))
        return 0
    run_eval(args)
    return 0

