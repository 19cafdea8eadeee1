"""Programs per second through the code sandbox, by worker count, and what the within-call cache saves.

Each program is a code_tasks reference solution (8 call tests each), judged by the `code` reward
exactly as in training: one isolated child process per program (see rewards/sandbox.py).

    python bench/sandbox_throughput.py [--programs 64] [--workers 1,2,4] [--repeats 3]

The last table is a training-shaped batch: B prompts x G samples where each group holds
`--distinct` different programs (GRPO groups at low temperature repeat short programs), with
and without the cache of identical (program, tests) pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from rewards.code import code_reward
from rewards.sandbox import isolation_level
from rl_reasoning.tasks.code_tasks import CodeTaskConfig, CodeTasks


def fenced(program: str) -> str:
    return f"```python\n{program}```"


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=64)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--group", type=int, default=8, help="G: samples per prompt")
    ap.add_argument("--distinct", type=int, default=3, help="different programs per group in the training-shaped batch")
    args = ap.parse_args()
    tasks = list(CodeTasks(CodeTaskConfig(), seed=0, size=args.programs))
    completions = [fenced(t["answer"]) for t in tasks]
    tests = [t["tests"] for t in tasks]
    print(f"isolation: {isolation_level()}; usable CPUs: {len(os.sched_getaffinity(0))}; {args.programs} distinct programs, "
          f"{len(tests[0])} tests each; median of {args.repeats}")
    print("\n| workers | seconds | programs/s |\n|---|---|---|")
    for w in (int(x) for x in args.workers.split(",")):
        assert code_reward(completions, tests=tests, workers=w) == [1.0] * len(tasks)
        s = timed(lambda w=w: code_reward(completions, tests=tests, workers=w), args.repeats)
        print(f"| {w} | {s:.2f} | {len(tasks) / s:.1f} |", flush=True)

    G = args.group
    B = max(1, args.programs // G)
    batch, batch_tests = [], []
    for b in range(B):
        for g in range(G):  # G samples of task b, `distinct` different program texts among them
            batch.append(fenced(f"# variant {g % args.distinct}\n" + tasks[b]["answer"]))
            batch_tests.append(tasks[b]["tests"])
    cached = code_reward(batch, tests=batch_tests)
    print(f"\ntraining-shaped batch: {B} x {G} completions, {args.distinct} distinct programs per group "
          f"(cached_frac {cached.metrics['cached_frac']:.2f})\n")
    print("| cache | seconds | completions/s |\n|---|---|---|")
    with_cache = timed(lambda: code_reward(batch, tests=batch_tests), args.repeats)
    # no cache: make every program text unique with a trailing comment
    unique = [c.replace("```python\n", f"```python\n# sample {i}\n", 1) for i, c in enumerate(batch)]
    without = timed(lambda: code_reward(unique, tests=batch_tests), args.repeats)
    print(f"| on | {with_cache:.2f} | {len(batch) / with_cache:.1f} |")
    print(f"| off | {without:.2f} | {len(batch) / without:.1f} |")


if __name__ == "__main__":
    main()
