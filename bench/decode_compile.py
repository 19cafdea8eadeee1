"""Does `torch.compile` pay off for the decode step on this CPU? Per-token forward time of
SmolLM2-135M at a fixed batch, eager (plain weights, and our packed weights) vs the decoder
layers compiled with inductor (regional compilation, dynamic shapes, plain weights: inductor
cannot take our pre-packed oneDNN weights unless it freezes the parameters into constants,
which would need a recompile after every optimizer step).

    python bench/decode_compile.py [--rows 16] [--prompt 100] [--steps 30] [--sweep 8,4] [--profile]

Prints the median decode-step time of the eager path at each row count (a step costs about the
same however few rows remain: the weights are read once per step), then the compile time and
step time of each variant at `--rows`. `--profile` instead prints a torch.profiler table of 10
eager packed decode steps at `--rows` (operators by self CPU time).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rl_reasoning.cpu_kernels import gqa_attention, packed_linear_weights
from rl_reasoning.kv_cache import PreallocatedCache
from rl_reasoning.models import load_model


def decode_steps(model, rows: int, prompt: int, steps: int, packed: bool, profiler=None) -> list[float]:
    """Seconds per decode step after a `prompt`-token prefill, `rows` rows."""
    torch.manual_seed(0)
    times = []
    with torch.no_grad(), packed_linear_weights(model, rows, enabled=packed), gqa_attention(model):
        cache = PreallocatedCache(room=steps + 1)
        ids = torch.randint(0, 1000, (rows, prompt))
        model(input_ids=ids, attention_mask=torch.ones(rows, prompt, dtype=torch.long), past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = torch.randint(0, 1000, (rows, 1))
        for i in range(steps):
            if profiler is not None and i == steps - 10:
                profiler.start()
            start = time.perf_counter()
            model(input_ids=token, attention_mask=torch.ones(rows, prompt + 1 + i, dtype=torch.long),
                  position_ids=torch.full((rows, 1), prompt + i), past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - start)
    if profiler is not None:
        profiler.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sweep", default="8,4", help="further row counts for the eager packed path")
    parser.add_argument("--profile", action="store_true", help="profile 10 eager packed decode steps instead")
    args = parser.parse_args()
    model = load_model("smollm2-135m-instruct").model.eval()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU])
        times = decode_steps(model, args.rows, args.prompt, max(args.steps, 12), packed=True, profiler=prof)
        print(f"{args.rows} rows, prompt {args.prompt}: median step {statistics.median(times[-10:]) * 1e3:.1f} ms (profiled)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        return
    print(f"SmolLM2-135M fp32, {torch.get_num_threads()} threads, {args.rows} rows, prompt {args.prompt}, {args.steps} decode steps\n")
    print("| variant | first step (s) | median step (ms) |")
    print("|---|---|---|")

    def row(name, times):
        print(f"| {name} | {times[0]:.2f} | {statistics.median(times[3:]) * 1e3:.1f} |", flush=True)

    row("eager, packed weights (default)", decode_steps(model, args.rows, args.prompt, args.steps, packed=True))
    for rows in (int(r) for r in args.sweep.split(",") if r):
        row(f"eager, packed weights, {rows} rows", decode_steps(model, rows, args.prompt, args.steps, packed=True))
    row("eager, plain weights", decode_steps(model, args.rows, args.prompt, args.steps, packed=False))
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    for layer in model.model.layers:
        layer.compile(dynamic=True)
    row("compiled layers, plain weights (first step includes compilation)", decode_steps(model, args.rows, args.prompt, args.steps, packed=False))
    row("compiled layers, plain weights, warm", decode_steps(model, args.rows, args.prompt, args.steps, packed=False))


if __name__ == "__main__":
    main()
