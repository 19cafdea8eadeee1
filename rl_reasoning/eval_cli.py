"""`rl-reasoning eval`: score a model (ours, the base model, any HF dir) on a task's held-out set.

    rl-reasoning eval --model runs/x/checkpoints/step-000012 --task basic_arithmetic --n 8 --k 1,4,8
    rl-reasoning eval --recipe recipes/quickstart.yaml --model smollm2-135m-instruct --out before.json
    rl-reasoning eval --compare before.json after.json

The held-out problems are the ones the trainer holds out for the same data config (same
seed), so a recipe's "before" and "after" are scored on the same problems. Without a recipe,
the prompt asks for <think>/<answer> with a `<think>` prefill, and the accuracy reward is the
task's verifier (reasoning_gym), `code` for HumanEval and code_tasks, or `math` for files. Sampling settings
come from the flags, else from the recipe's `eval` section (num_samples, k, temperature) and
`rollout` section (top_p, stop), so `eval --recipe R` scores exactly as R's training run does.
`--compare` prints both results and the paired difference with a 95 % bootstrap confidence
interval over problems.
"""

from __future__ import annotations

from pathlib import Path

from .config import Config, DataConfig, RewardSpec, load_config
from .errors import UserError
from .untrusted import terminal_safe

DEFAULT_SYSTEM_PROMPT = (
    "Solve the problem. First reason briefly inside <think>...</think>, then write the final answer "
    "inside <answer>...</answer>."
)
HUMANEVAL_PROBLEMS = 164
DEFAULT_SAMPLES = 8  # n when --k is given and neither --n nor the recipe sets it
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
COLUMN_KEYS = ("question_column", "answer_column", "tests_column", "answer_format", "on_bad_row")


def build_config(args) -> Config:
    """The recipe (or the defaults), its overrides, then the command-line flags: flags win over the
    recipe, the recipe over the built-in defaults."""
    from .runtime import import_beside

    overrides = list(args.overrides)
    if args.recipe is None:
        overrides = [f"prompt.system_prompt={DEFAULT_SYSTEM_PROMPT}", "prompt.prefill=<think>", *overrides]
    import_beside(args.recipe)  # as train and distill: a reward module beside the recipe imports by name
    cfg = load_config(args.recipe, overrides)
    if args.model:
        cfg.model.name = args.model
    keep_rewards = args.recipe is not None
    if args.task:
        cfg.data = task_data(cfg.data, args.task)
        # a recipe's task-agnostic reasoning-gym verifier still applies to another reasoning-gym task
        keep_rewards = keep_rewards and cfg.data.source == "reasoning_gym" and cfg.accuracy_reward_name == "reasoning_gym"
    if not keep_rewards:
        default = {"humaneval": "code", "code_tasks": "code", "reasoning_gym": "reasoning_gym"}.get(cfg.data.source, "math")
        cfg.rewards, cfg.accuracy_reward, cfg.reward_weights = [RewardSpec(default)], None, None
        if cfg.data.source in ("humaneval", "code_tasks"):
            cfg.prompt.system_prompt, cfg.prompt.prefill, cfg.rollout.stop = None, "", []
    if args.problems is not None:
        cfg.data.eval_size = args.problems
    if args.max_new_tokens is not None:
        cfg.eval.max_new_tokens = args.max_new_tokens
    if args.batch_size is not None:
        cfg.eval.batch_size = args.batch_size
    if args.temperature is not None:
        cfg.eval.temperature = args.temperature
    if args.k is not None:
        cfg.eval.k = [int(k) for k in args.k.split(",")] if args.k.strip() else []
    if args.n is not None:
        cfg.eval.num_samples = args.n
    elif cfg.eval.k and cfg.eval.num_samples == 0:
        cfg.eval.num_samples = max(DEFAULT_SAMPLES, *cfg.eval.k)
    if any(k > cfg.eval.num_samples for k in cfg.eval.k):
        source = "--n" if args.n is not None else "the recipe's eval.num_samples"
        raise UserError(f"--k: every k must be <= --n ({cfg.eval.num_samples}, from {source})")
    cfg.validate()
    return cfg


def task_data(data: DataConfig, task: str) -> DataConfig:
    """The data section for `--task`: the recipe's own when it names the same reasoning-gym task,
    else a new one keeping the recipe's held-out size and seed (and its column mapping for files)."""
    if task in ("humaneval", "code_tasks"):
        new = DataConfig(source=task)
    elif task.endswith(FILE_SUFFIXES):
        new = DataConfig(source="file", path=task)
        if data.source in ("file", "jsonl", "hf"):
            for key in COLUMN_KEYS:
                setattr(new, key, getattr(data, key))
    elif data.source == "reasoning_gym" and data.task == task and not data.mixture:
        return data  # the recipe's task, with its task_config
    else:
        new = DataConfig(source="reasoning_gym", task=task)
    new.eval_size, new.seed = data.eval_size, data.seed
    if task == "humaneval":
        new.eval_size = HUMANEVAL_PROBLEMS  # a fixed benchmark: all of it unless --problems says otherwise
    return new


def run_eval(args) -> dict:
    from .evaluation import evaluate_model
    from .results import markdown_table, write_result

    result = evaluate_model(build_config(args))
    out = Path(args.out) if args.out else None
    if out:
        write_result(out, result)
    print(terminal_safe(markdown_table([result])))
    if out:
        print(f"\nwritten: {out}")
    return result


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a model on held-out problems (pass@k, maj@k, format, length)",
                        description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    ev.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    ev.add_argument("--model", help="built-in name, checkpoint / HF dir, .gguf file or Hub id (default: the recipe's)")
    ev.add_argument("--task", help="reasoning-gym task name, 'humaneval', 'code_tasks', or a data file")
    ev.add_argument("--recipe", help="take data, prompt and accuracy reward from this recipe")
    ev.add_argument("--n", type=int, help=f"samples per problem for pass@k / maj@k (default: the recipe's eval.num_samples, "
                    f"or {DEFAULT_SAMPLES} when --k is given)")
    ev.add_argument("--k", help="comma-separated k values, e.g. 1,4,8 (default: the recipe's eval.k; none = greedy only)")
    ev.add_argument("--temperature", type=float, help="sampling temperature (default: the recipe's eval.temperature, 0.6)")
    ev.add_argument("--problems", type=int, help="held-out problems (default: the recipe's data.eval_size; all 164 for --task humaneval)")
    ev.add_argument("--max-new-tokens", type=int)
    ev.add_argument("--batch-size", type=int, help="completions generated together (default: the recipe's eval.batch_size)")
    ev.add_argument("--out", help="write the JSON result here")
    ev.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two result files instead of evaluating")
    ev.set_defaults(func=main)


def main(args) -> int:
    from .results import compare

    if args.compare:
        print(terminal_safe(compare(*args.compare)))  # model/task names come from the files
        return 0
    run_eval(args)
    return 0

