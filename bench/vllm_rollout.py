"""Generation throughput: vLLM backend vs our engine vs `model.generate`, same prompts, same run.

    python bench/vllm_rollout.py [--prompts 4] [--G 8] [--max-new-tokens 96] [--repeats 2]

SmolLM2-135M-Instruct fp32, chat-templated reasoning-gym arithmetic prompts, T = 1. Prints
tokens/s per engine (median over repeats) and ratios against `model.generate`. Needs `make vllm`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from rl_reasoning.config import DataConfig, PromptConfig, RolloutConfig, VLLMConfig
    from rl_reasoning.models import eos_token_ids, load_model
    from rl_reasoning.prompts import encode_prompt, render_prompt
    from rl_reasoning.rollout import RolloutEngine
    from rl_reasoning.tasks import load_task
    from rl_reasoning.vllm_rollout import VLLMRolloutEngine

    loaded = load_model("smollm2-135m-instruct")
    model, tok = loaded.model.eval(), loaded.tokenizer
    problems = list(load_task(DataConfig(train_size=args.prompts, eval_size=0)).train)[: args.prompts]
    pcfg = PromptConfig()
    prompts = [encode_prompt(tok, render_prompt(tok, p["question"], pcfg), pcfg.template) for p in problems]
    params = RolloutConfig(num_generations=args.G, max_new_tokens=args.max_new_tokens, temperature=1.0)
    eos = eos_token_ids(model, tok)

    ours = RolloutEngine(model, tok, eos, tok.pad_token_id)
    t0 = time.perf_counter()
    vllm = VLLMRolloutEngine(loaded.source, tok, eos, tok.pad_token_id, VLLMConfig(), args.max_new_tokens, 0, torch.float32)
    print(f"vLLM start-up: {time.perf_counter() - t0:.1f} s  (torch threads {torch.get_num_threads()})")

    def run_ours(seed):
        return int(ours.generate(prompts, params, torch.Generator().manual_seed(seed)).lengths.sum())

    def run_vllm(seed):
        return int(vllm.generate(prompts, params, torch.Generator().manual_seed(seed)).lengths.sum())

    def run_generate(seed):
        torch.manual_seed(seed)
        ids, mask = [], []
        width = max(len(p) for p in prompts)
        for p in prompts:
            ids.append([tok.pad_token_id] * (width - len(p)) + p)
            mask.append([0] * (width - len(p)) + [1] * len(p))
        out = model.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=True, temperature=1.0, top_k=0,
            max_new_tokens=args.max_new_tokens, num_return_sequences=args.G, eos_token_id=eos, pad_token_id=tok.pad_token_id,
        )[:, width:]
        done = torch.isin(out, torch.tensor(eos)).int()
        first = torch.where(done.any(-1), done.argmax(-1) + 1, torch.full((out.shape[0],), out.shape[1]))
        return int(first.sum())

    rates = {"model.generate": [], "ours": [], "vllm": []}
    for r in range(args.repeats):  # alternate so machine-speed drift hits all three
        for name, fn in (("model.generate", run_generate), ("ours", run_ours), ("vllm", run_vllm)):
            start = time.perf_counter()
            tokens = fn(100 + r)
            seconds = time.perf_counter() - start
            rates[name].append(tokens / seconds)
            print(f"repeat {r}: {name:15s} {tokens:5d} tokens in {seconds:6.1f} s = {tokens / seconds:6.1f} tok/s", flush=True)
    base = statistics.median(rates["model.generate"])
    print(f"\n{args.prompts} prompts x {args.G} samples x <= {args.max_new_tokens} tokens, median of {args.repeats}:")
    for name, values in rates.items():
        m = statistics.median(values)
        print(f"| {name} | {m:.1f} tok/s | {m / base:.2f}x |")


if __name__ == "__main__":
    main()
