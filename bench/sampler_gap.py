"""The sampler/trainer log-prob gap of each way our engine can sample in bf16, on the real model.

The update scores completions under autocast over the fp32 masters (precision.py). The engine can sample:
- `fp32`: on the fp32 policy (packed weights on CPU): the reference, a rounding-sized gap;
- `bf16 copy`: on `SamplingCopy`, every weight and activation in bf16 (what training uses);
- `autocast`: on the fp32 policy under autocast, so matmuls are bf16 and the residual stream fp32, as in the update.
For each, the same prompts are sampled (T = 1, same seed) and the completions scored the update's
way; printed: mean and largest |log pi_update - log pi_sampler| over the sampled tokens, and the
seconds the sampling took (on a CPU without bf16 units the bf16 timings say nothing about speed).

    python bench/sampler_gap.py [--prompts 4] [--generations 4] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--recipe", default="recipes/r1zero_cpu.yaml")
    args = parser.parse_args()

    from rl_reasoning.config import load_config
    from rl_reasoning.logprobs import completion_logprobs
    from rl_reasoning.models import eos_token_ids, load_model
    from rl_reasoning.precision import Precision, SamplingCopy
    from rl_reasoning.prompts import encode_prompt, render_prompt
    from rl_reasoning.rollout import RolloutEngine
    from rl_reasoning.tasks import load_task

    cfg = load_config(args.recipe, [f"rollout.num_generations={args.generations}", f"rollout.max_new_tokens={args.max_tokens}"])
    loaded = load_model(cfg.model.name)
    policy, tok = loaded.model.eval(), loaded.tokenizer
    bf16 = Precision(torch.bfloat16, "bench")
    problems = [load_task(cfg.data).train[i] for i in range(args.prompts)]
    prompts = [encode_prompt(tok, render_prompt(tok, p["question"], cfg.prompt), cfg.prompt.template) for p in problems]
    samplers = {
        "fp32": (policy, contextlib.nullcontext),
        "bf16 copy": (SamplingCopy(policy, torch.bfloat16).refreshed(policy, 0), contextlib.nullcontext),
        "autocast": (policy, lambda: bf16.autocast("cpu")),
    }
    print(f"{cfg.model.name}, {args.prompts} prompts x {args.generations} samples, <= {args.max_tokens} tokens, T = {cfg.rollout.temperature}")
    print("| sampler | tokens | mean abs gap | largest gap | sampling (s) |\n|---|---|---|---|---|")
    for name, (model, context) in samplers.items():
        engine = RolloutEngine(model, tok, eos_token_ids(policy, tok), tok.pad_token_id)
        start = time.perf_counter()
        with context():
            batch = engine.generate(prompts, cfg.rollout, torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        with torch.no_grad(), bf16.autocast("cpu"):  # the update's way: autocast over the fp32 masters
            update = completion_logprobs(policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                                         cfg.rollout.temperature)  # (N, Lc)
        gap = (update - batch.logprobs)[batch.completion_mask.bool()].abs()
        print(f"| {name} | {gap.numel()} | {float(gap.mean()):.4f} | {float(gap.max()):.3f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
