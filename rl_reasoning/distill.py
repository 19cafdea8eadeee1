"""`rl-reasoning distill`: distil a reasoner into a student by rejection-sampled SFT (DeepSeek-R1 §2.4).

    rl-reasoning distill --recipe recipes/r1zero_cpu.yaml --teacher runs/x/checkpoints/step-000060 \\
        --student smollm2-135m-instruct --out runs/distill [--problems 128] [--samples 8]

1. Sample: the teacher (any checkpoint, HF directory or built-in name) samples `--samples`
   completions for each of `--problems` training problems of the recipe (never its held-out
   ones), with the recipe's prompt, stop strings and temperature.
2. Filter: keep a completion when the recipe's accuracy reward gives it full credit and (unless
   `--no-require-format`) it is well formatted (<think>...</think><answer>...</answer>); drop
   duplicates of a problem's completions (whitespace-normalised); keep at most
   `--keep-per-problem` per problem. Written to `sft_data.jsonl` as prompt/completion pairs.
3. Fine-tune: TRL's `SFTTrainer` on those pairs, loss on completion tokens only (TRL's default
   for prompt/completion data), on fp32 master weights with TRL's bf16 autocast when the recipe's
   `model.compute_dtype` resolves to bf16 (precision.py; the teacher samples in that dtype too).
   The student is saved to `student/`.
4. Evaluate: the student on the recipe's held-out problems with `evaluation.evaluate_model`,
   exactly what `rl-reasoning eval --recipe RECIPE --model STUDENT` runs (`eval.json`;
   `rl-reasoning eval --compare` works on it).

`summary.json` has the counts at each filter and the wall and CPU seconds of each stage.
Departures from the paper: R1 distilled 800k curated samples (reasoning and non-reasoning) into
models of 1.5B+; here the data is a few hundred samples of one task, which is what fits a CPU.
"""

from __future__ import annotations

import copy
import json
import re
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import Config
from .errors import UserError
from .untrusted import terminal_safe


@dataclass
class DistillStats:
    problems: int = 0
    sampled: int = 0
    correct: int = 0
    correct_and_formatted: int = 0
    unique: int = 0
    kept: int = 0
    seconds: dict = field(default_factory=dict)  # stage -> wall seconds
    cpu_seconds: dict = field(default_factory=dict)  # stage -> user + system CPU seconds of this process


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def select_completions(
    completions: list[str],  # (P * N) completions, prefill included, N consecutive per problem
    scores: list[float],  # (P * N) accuracy reward (nan = not scored)
    formatted: list[bool],  # (P * N)
    samples: int,
    keep_per_problem: int,
    require_format: bool,
    stats: DistillStats,
) -> list[list[int]]:
    """Indices of the completions kept for each problem: fully correct, formatted if required,
    first occurrence of each distinct (whitespace-normalised) text, at most keep_per_problem."""
    from .reward_runner import CORRECT

    kept = []
    for p in range(len(completions) // samples):
        seen, chosen = set(), []
        for i in range(p * samples, (p + 1) * samples):
            correct = scores[i] >= CORRECT  # False for nan
            stats.correct += bool(correct)
            ok = correct and (formatted[i] or not require_format)
            stats.correct_and_formatted += bool(correct and formatted[i])
            key = _normalised(completions[i])
            if not ok or key in seen:
                continue
            seen.add(key)
            stats.unique += 1
            if len(chosen) < keep_per_problem:
                chosen.append(i)
        stats.kept += len(chosen)
        kept.append(chosen)
    return kept


class _Stage:
    """Wall and CPU seconds of a block, recorded into stats."""

    def __init__(self, stats: DistillStats, name: str):
        self.stats, self.name = stats, name

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.stats.seconds[self.name] = round(time.perf_counter() - self.wall, 2)
        self.stats.cpu_seconds[self.name] = round(_cpu_seconds() - self.cpu, 2)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_sft_data(cfg: Config, teacher: str, problems: int, samples: int, temperature: float | None, keep_per_problem: int,
                   require_format: bool, batch_size: int, stats: DistillStats) -> list[dict]:
    """Steps 1-2: prompt/completion rows (plus the problem's question and answer) from the teacher."""
    import torch

    from rewards.format import is_well_formatted

    from .evaluation import generate_and_score
    from .models import eos_token_ids, load_model
    from .precision import cast_parameters, run_precision
    from .prompts import render_prompt
    from .reward_runner import accuracy_runner
    from .rollout import RolloutEngine
    from .runtime import default_device
    from .tasks import load_task

    if cfg.rollout.tools or cfg.rollout.environment:
        raise UserError("distill: rejection-sampled SFT of tool calls or environment turns is not supported yet; "
                        "remove rollout.tools / rollout.environment from the recipe")
    task = load_task(cfg.data)
    pool = []
    for i in range(len(task.train)):  # a Sequence (reasoning-gym problems are generated on access): no slicing
        if len(pool) == problems:
            break
        if not task.is_held_out(task.train[i]):
            pool.append(task.train[i])
    if not pool:
        raise UserError("distill: the recipe's data has no training problems")
    stats.problems = len(pool)
    scorer = accuracy_runner(cfg)
    device = default_device()
    loaded = load_model(teacher, device, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.cache_dir)
    precision = run_precision(cfg.model.compute_dtype, device, loaded.model, cfg.model.cache_dir)
    cast_parameters(loaded.model, precision.compute)  # the teacher only samples
    print(precision.describe(), flush=True)
    tok = loaded.tokenizer
    engine = RolloutEngine(loaded.model, tok, eos_token_ids(loaded.model, tok), tok.pad_token_id)
    # the recipe's sampling (top_p, stop strings, packed weights), with G = --samples and --temperature
    params = replace(cfg.rollout, num_generations=samples, temperature=cfg.rollout.temperature if temperature is None else temperature)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    rows = []
    for _, chunk, batch, completions, scores in generate_and_score(
        engine, tok, pool, cfg.prompt, scorer, params, batch_size, 0, generator, "distillation sampling"
    ):
        stats.sampled += len(completions)
        formatted = [is_well_formatted(c) for c in completions]
        kept = select_completions(completions, scores.tolist(), formatted, samples, keep_per_problem, require_format, stats)
        for problem, indices in zip(chunk, kept):
            prompt = render_prompt(tok, problem["question"], cfg.prompt)
            for i in indices:
                rows.append({"prompt": prompt, "completion": batch.texts[i], "question": problem["question"], "answer": problem["answer"]})
    return rows


def finetune(student: str, rows: list[dict], out_dir: Path, cfg, epochs: float, lr: float, batch_size: int, seed: int) -> Path:
    """Step 3: TRL SFTTrainer on prompt/completion pairs (completion-only loss); returns the student dir."""
    import datasets
    import trl

    from .models import load_model
    from .precision import run_precision
    from .runtime import default_device

    device = default_device()
    loaded = load_model(student, device, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.cache_dir)  # fp32 masters
    half = run_precision(cfg.model.compute_dtype, device, loaded.model, cfg.model.cache_dir).half  # bf16: TRL's autocast
    data = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    args = trl.SFTConfig(
        output_dir=str(out_dir / "sft"), num_train_epochs=epochs, learning_rate=lr, per_device_train_batch_size=batch_size,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], seed=seed,
        bf16=half, fp16=False, use_cpu=device.type == "cpu", gradient_checkpointing=False, completion_only_loss=True,
        max_length=None, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = trl.SFTTrainer(model=loaded.model, args=args, train_dataset=data, processing_class=loaded.tokenizer)
    trainer.train()
    student_dir = out_dir / "student"
    trainer.save_model(str(student_dir))
    loaded.tokenizer.save_pretrained(str(student_dir))
    (out_dir / "sft_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in trainer.state.log_history))
    return student_dir


def run(args) -> dict:
    from .config import load_config
    from .evaluation import evaluate_model
    from .results import markdown_table, write_result
    from .runtime import configure_cpu, import_beside, quiet_library_progress_bars

    import_beside(args.recipe)  # as `train`: a reward module beside the recipe imports by name
    cfg = load_config(args.recipe, list(args.overrides))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; choose a new directory")
    if args.samples < 1 or args.problems < 1 or args.keep_per_problem < 1:
        raise UserError("--samples, --problems and --keep-per-problem must be >= 1")
    quiet_library_progress_bars()
    configure_cpu(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    stats = DistillStats()
    with _Stage(stats, "sample"):
        rows = build_sft_data(cfg, args.teacher, args.problems, args.samples, args.temperature, args.keep_per_problem,
                              not args.no_require_format, args.batch_size or cfg.eval.batch_size, stats)
    (out / "sft_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"sampled {stats.sampled} completions for {stats.problems} problems: {stats.correct} correct, "
          f"{stats.correct_and_formatted} correct and formatted, {stats.unique} distinct, {stats.kept} kept -> {out / 'sft_data.jsonl'}")
    if not rows:
        _write_summary(out, args, stats, None)
        raise UserError("distill: the teacher produced no completion that passed the filter; nothing to fine-tune on "
                        "(try more --samples, another --temperature, or --no-require-format)")
    with _Stage(stats, "finetune"):
        student_dir = finetune(args.student or cfg.model.name, rows, out, cfg, args.epochs, args.lr, args.sft_batch_size, cfg.seed)
    eval_result = None
    if not args.no_eval:
        with _Stage(stats, "evaluate"):
            eval_cfg = copy.deepcopy(cfg)  # what `rl-reasoning eval --recipe RECIPE --model STUDENT` scores
            eval_cfg.model.name = str(student_dir)
            if args.eval_problems:
                eval_cfg.data.eval_size = args.eval_problems
            eval_result = evaluate_model(eval_cfg)
            write_result(out / "eval.json", eval_result)
            print(terminal_safe(markdown_table([eval_result])))
    _write_summary(out, args, stats, eval_result)
    print(f"student: {student_dir}\nsummary: {out / 'summary.json'}")
    return {"stats": stats, "eval": eval_result}


def _write_summary(out: Path, args, stats: DistillStats, eval_result: dict | None) -> None:
    summary = {
        "teacher": args.teacher, "student": args.student, "recipe": args.recipe,
        "settings": {k: getattr(args, k) for k in ("problems", "samples", "temperature", "keep_per_problem", "epochs", "lr", "sft_batch_size")},
        "require_format": not args.no_require_format,
        "counts": {k: getattr(stats, k) for k in ("problems", "sampled", "correct", "correct_and_formatted", "unique", "kept")},
        "seconds": stats.seconds, "cpu_seconds": stats.cpu_seconds,
        "student_eval": None if eval_result is None else eval_result["metrics"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("distill", help="rejection-sample a teacher, SFT a student on the correct completions, evaluate it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    p.add_argument("--recipe", required=True, help="data, prompt, sampling and accuracy reward come from this recipe")
    p.add_argument("--teacher", required=True, help="checkpoint / HF dir / built-in name that samples the data")
    p.add_argument("--student", help="model to fine-tune (default: the recipe's model.name)")
    p.add_argument("--out", required=True, help="new output directory")
    p.add_argument("--problems", type=int, default=128, help="training problems to sample (default 128)")
    p.add_argument("--samples", type=int, default=8, help="teacher samples per problem (default 8)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the recipe's rollout.temperature)")
    p.add_argument("--keep-per-problem", type=int, default=2, help="distinct correct completions kept per problem (default 2)")
    p.add_argument("--no-require-format", action="store_true", help="keep correct completions even when not well formatted")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--sft-batch-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, help="completions sampled together (default: the recipe's eval.batch_size)")
    p.add_argument("--eval-problems", type=int, help="held-out problems for the student (default: the recipe's data.eval_size)")
    p.add_argument("--no-eval", action="store_true", help="skip evaluating the student")
    p.set_defaults(func=lambda args: (run(args), 0)[1])
