"""Generated tokens/s of our rollout engine vs `model.generate` on the same prompts, across P and G.

Both sample at T=1 with no top-k/top-p, stop at EOS, and run in this process, alternating.
`--profile` adds a torch.profiler table of one engine call (top operators by CPU time).
`--static` adds our engine with `rollout.static_decode: true` (fixed buffers, no compaction; the
path CUDA graphs replay) to the same rounds, from the same seeds, and the share of completions
identical to the dynamic engine's (attention over another width rounds differently, so a
near-tie can flip a token and the completion diverges from there).

    python bench/rollout.py [--configs 2x8,4x8,8x4] [--max-tokens 96] [--repeats 2] [--profile] [--static]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rl_reasoning.config import RolloutConfig
from rl_reasoning.engine import left_pad
from rl_reasoning.models import eos_token_ids, load_model
from rl_reasoning.rollout import RolloutEngine

SYSTEM = "Solve the problem. Reason step by step inside <think> </think>, then give the final answer inside <answer> </answer>."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="2x8,4x8,8x4", help="P x G pairs")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--static", action="store_true", help="also time rollout.static_decode: true")
    args = parser.parse_args()

    import reasoning_gym

    loaded = load_model("smollm2-135m-instruct")
    model, tok = loaded.model, loaded.tokenizer
    eos = eos_token_ids(model, tok)
    engine = RolloutEngine(model, tok, eos, tok.pad_token_id)
    data = list(reasoning_gym.create_dataset("basic_arithmetic", size=64, seed=3, min_terms=2, max_terms=3, min_digits=1, max_digits=2))

    def prompts(n):
        texts = [tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": d["question"]}],
                                         tokenize=False, add_generation_prompt=True) for d in data[:n]]
        return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    print(f"SmolLM2-135M-Instruct fp32, {torch.get_num_threads()} threads, <= {args.max_tokens} new tokens, T=1\n")
    extra = " ours static tok/s | static / ours | identical completions |" if args.static else ""
    print(f"| P x G | ours tok/s | model.generate tok/s | ours / generate |{extra}")
    print("|---|---|---|---|" + ("---|---|---|" if args.static else ""))
    for config in args.configs.split(","):
        P, G = (int(x) for x in config.split("x"))
        ids = prompts(P)
        ours, hf, static, same = [], [], [], []
        for r in range(args.repeats + 1):  # the first round is a warm-up
            gen = torch.Generator().manual_seed(r)
            start = time.perf_counter()
            batch = engine.generate(ids, RolloutConfig(num_generations=G, max_new_tokens=args.max_tokens, temperature=1.0), gen)
            t_ours = time.perf_counter() - start
            n_ours = int(batch.lengths.sum())
            if args.static:
                start = time.perf_counter()
                fixed = engine.generate(ids, RolloutConfig(num_generations=G, max_new_tokens=args.max_tokens, temperature=1.0,
                                                           static_decode=True), torch.Generator().manual_seed(r))
                if r:
                    static.append(int(fixed.lengths.sum()) / (time.perf_counter() - start))
                    same.append(sum(x == y for x, y in zip(fixed.texts, batch.texts)) / len(batch.texts))

            p_ids, p_mask = left_pad([i for i in ids for _ in range(G)], tok.pad_token_id)
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(input_ids=p_ids, attention_mask=p_mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                     max_new_tokens=args.max_tokens, eos_token_id=eos, pad_token_id=tok.pad_token_id)
            t_hf = time.perf_counter() - start
            new = out[:, p_ids.shape[1]:]
            n_hf = int(sum(_length(row, eos, tok.pad_token_id) for row in new))
            if r:
                ours.append(n_ours / t_ours)
                hf.append(n_hf / t_hf)
        a, b = statistics.median(ours), statistics.median(hf)
        tail = f" {statistics.median(static):.0f} | {statistics.median(static) / a:.2f}x | {statistics.mean(same):.0%} |" if args.static else ""
        print(f"| {P} x {G} | {a:.0f} | {b:.0f} | {a / b:.2f}x |{tail}", flush=True)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        ids = prompts(2)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine.generate(ids, RolloutConfig(num_generations=8, max_new_tokens=args.max_tokens, temperature=1.0), torch.Generator().manual_seed(0))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def _length(row: torch.Tensor, eos: list[int], pad: int) -> int:
    """Generated tokens up to and including the first EOS."""
    for i, t in enumerate(row.tolist()):
        if t in eos:
            return i + 1
    return int((row != pad).sum())


if __name__ == "__main__":
    main()
