"""Build the pool of real completions that the self-correction detectors are measured on.

    python bench/detector_pool.py --out runs/detector_pool.jsonl [--runs RUN ...] [--per-variant 60]

1. Samples the base model (SmolLM2-135M-Instruct) with prompts that invite checking and
   correcting (real runs rarely reflect, so positives have to be provoked), and with plain
   prompts on word problems (hard negatives: "wait", "check", "but" used plainly).
2. Adds completions from the run folders given with --runs: training and held-out traces; a
   multi-turn episode contributes each of its turns as its own item (the detectors analyse an
   episode turn by turn, rl_reasoning/traces/analysis.py).

Writes one JSON object per line: id, source, task, question, gold, text. It never writes what
the detectors say: the labels (tests/data/detector_labels.jsonl) are made from the text alone.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from rl_reasoning.config import PromptConfig, RolloutConfig
from rl_reasoning.jsonl import read_records
from rl_reasoning.models import eos_token_ids, load_model
from rl_reasoning.prompts import encode_prompt, render_prompt
from rl_reasoning.rollout import RolloutEngine

ARITHMETIC = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": ["+", "-"],
              "allow_parentheses": False, "allow_negation": False}

# (name, reasoning-gym task, task config, system prompt)
VARIANTS = [
    ("check_and_correct", "basic_arithmetic", ARITHMETIC,
     "Solve the problem. After you get an answer, check it. If the check shows a mistake, say so, correct it, and give the "
     "corrected answer."),
    ("shown_correction", "basic_arithmetic", ARITHMETIC,
     "Solve the problem and check your work. Example: Calculate 23 + 49. 23 + 49 = 62. Wait, let me check: 3 + 9 = 12, so I "
     "carry 1, and 20 + 40 + 10 = 70, 70 + 2 = 72. I made a mistake. The answer is 72."),
    ("shown_verification", "basic_arithmetic", ARITHMETIC,
     "Solve the problem and verify the result. Example: Calculate 23 + 49. 23 + 49 = 72. Let me verify: 72 - 49 = 23. "
     "Correct. The answer is 72."),
    ("word_problem_check", "gsm_symbolic", {},
     "Solve the word problem step by step. Then double-check your answer, and fix it if it is wrong."),
    ("word_problem_plain", "gsm_symbolic", {}, "Solve the word problem step by step and give the final answer."),
    ("time_plain", "time_intervals", {}, "Solve the problem step by step and give the final answer."),
]


def sample_variants(per_variant: int, max_new_tokens: int, temperature: float, seed: int) -> list[dict]:
    import reasoning_gym

    loaded = load_model("smollm2-135m-instruct")
    tok = loaded.tokenizer
    engine = RolloutEngine(loaded.model, tok, eos_token_ids(loaded.model, tok), tok.pad_token_id)
    items = []
    for name, task, config, system in VARIANTS:
        G = 2
        data = reasoning_gym.create_dataset(task, size=per_variant // G, seed=seed, **config)
        problems = [data[i] for i in range(len(data))]
        prompt = PromptConfig(template="chat", system_prompt=system)
        ids = [encode_prompt(tok, render_prompt(tok, p["question"], prompt), "chat") for p in problems]
        params = RolloutConfig(num_generations=G, max_new_tokens=max_new_tokens, temperature=temperature)
        batch = engine.generate(ids, params, torch.Generator().manual_seed(seed))
        for i, text in enumerate(batch.texts):
            p = problems[i // G]
            items.append({"source": f"base:{name}", "task": task, "question": p["question"], "gold": str(p["answer"]), "text": text})
        print(f"{name}: {len(batch.texts)} completions", flush=True)
    return items


def from_runs(runs: list[Path], per_run: int, rng: random.Random) -> list[dict]:
    items = []
    for run in runs:
        records = [r for name in ("traces.jsonl", "eval_traces.jsonl") if (run / name).exists() for r in read_records(run / name)]
        rng.shuffle(records)
        seen, taken = set(), []
        for r in records:
            turns = r.get("turn_texts") if isinstance(r.get("turn_texts"), list) and len(r.get("turn_texts")) > 1 else [r.get("completion")]
            for k, text in enumerate(turns):
                if not isinstance(text, str) or not text.strip() or text in seen:
                    continue
                seen.add(text)
                label = f"run:{run.parent.name if run.name == 'run' else run.name}" + (f":turn{k + 1}" if len(turns) > 1 else "")
                question = r.get("prompt", "")[-300:] if isinstance(r.get("prompt"), str) else ""
                taken.append({"source": label, "task": "", "question": question, "gold": str(r.get("answer", "")),
                              "step": r.get("step"), "text": text})
            if len(taken) >= per_run:
                break
        items += taken[:per_run]
        print(f"{run}: {len(taken[:per_run])} completions", flush=True)
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", nargs="*", default=[], help="run folders whose traces join the pool")
    ap.add_argument("--per-run", type=int, default=40)
    ap.add_argument("--per-variant", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    items = sample_variants(args.per_variant, args.max_new_tokens, args.temperature, args.seed) if args.per_variant else []
    items += from_runs([Path(r) for r in args.runs], args.per_run, rng)
    with open(args.out, "w") as f:
        for i, item in enumerate(items):
            f.write(json.dumps({"id": f"c{i:04d}", **item}) + "\n")
    print(f"wrote {len(items)} completions to {args.out}")


if __name__ == "__main__":
    main()
