"""One GRPO step, ours vs TRL's GRPOTrainer, measured side by side in one process, alternating.

Same model (the embedded SmolLM2-135M-Instruct, fp32 master weights), same prompts in the same
order, same G, max tokens and sampling (T=1, top-p 1, no top-k, EOS only), same optimizer
(AdamW, constant lr, clip 1.0), same loss (DAPO token-level, eps 0.2, beta 0, mu 1). The reward
is a deterministic hash of the completion text, so every group has reward variance and both
trainers run the full update (our zero-advantage skipping is a separate feature, not measured
here). TRL runs with gradient checkpointing off, once per `--trl-precisions` entry: `fp32`
(bf16=False) and `bf16` (bf16=True, its default: autocast over fp32 masters); ours runs once per
`--compute-dtypes` entry (`model.compute_dtype`: auto, float32, bfloat16). Each of ours is
reported against every TRL run and against the fastest of them.

Alternation: TRL trains; after each TRL step a callback runs one step of each of ours. With
several TRL precisions, the TRL runs follow each other on the same prompts and ours keep
alternating (their prompts restart with each TRL run). The first `--warmup` steps of every run
are not counted. Prints per-phase seconds (generation+reward, update), the ratio TRL/ours,
generated tokens/s and model-FLOPs utilisation against the matmul peak measured here in the
step's compute dtype. (The bf16 peak is a 1024² matmul; on CPUs that emulate bf16 it runs far
slower than the model's shapes do, and bf16 MFU then reads above 100 %: seen on an AVX2 CPU.)

    python bench/step_vs_trl.py [--steps 3] [--warmup 1] [--prompts 2] [--generations 8] [--max-tokens 96]
                                [--compute-dtypes auto] [--trl-precisions fp32,bf16] [--backends hf,vllm] [--vllm-recompute]
                                [--device cpu|cuda] [--random-init 135m|tiny] [--override key=value ...]

`--device cuda --random-init 135m` is the GPU comparison bench/gpu_check.py runs: a random-init
model of SmolLM2-135M's shape (no weights to carry; it samples to the token cap).

`--backends hf,vllm` runs one of our trainers per rollout backend (vLLM needs `make vllm`).
On CPUs without bf16 units (AVX2 only) bf16 is emulated and several times slower than fp32, for
TRL and for us alike; `auto` then resolves to float32 (rl_reasoning/precision.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

SYSTEM = "Solve the problem. Reason step by step inside <think> </think>, then give the final answer inside <answer> </answer>."


def hash_reward(completions, **_) -> list[float]:
    """A deterministic function of the text in [0, 1): distinct completions get distinct rewards."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [(zlib.crc32(t.encode()) % 10007) / 10007 for t in texts]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_peak_gflops(size: int = 2048, reps: int = 10, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e9


def measure_bandwidth_gbs(mb: int = 512, reps: int = 5, device: str = "cpu") -> float:
    x = torch.empty(mb * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    _sync(device)
    return 2 * x.numel() * 4 * reps / (time.perf_counter() - start) / 1e9  # read + write


def problems(n: int) -> list[dict]:
    import reasoning_gym

    data = reasoning_gym.create_dataset("basic_arithmetic", size=n, seed=7, min_terms=2, max_terms=3, min_digits=1, max_digits=2)
    return [{"id": f"b-{i}", "question": item["question"], "answer": item["answer"]} for i, item in enumerate(data)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps of each trainer")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--backends", default="hf", help="our rollout backends to run, comma-separated: hf, vllm")
    parser.add_argument("--vllm-recompute", action="store_true", help="vLLM backend: recompute old log-probs with the policy")
    parser.add_argument("--compute-dtypes", default="auto", help="ours: model.compute_dtype values, comma-separated")
    parser.add_argument("--trl-precisions", default="fp32,bf16", help="TRL runs, comma-separated: fp32 (bf16=False), bf16 (bf16=True)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both trainers run")
    parser.add_argument("--random-init", choices=["135m", "tiny"], default=None,
                        help="a random-init model of this shape (gpu_check.SHAPES) with the SmolLM2 tokenizer, instead of the weights")
    parser.add_argument("--override", action="append", default=[], help="ours: an extra key=value (repeatable)")
    args = parser.parse_args()
    trl_precisions = args.trl_precisions.split(",")
    if not set(trl_precisions) <= {"fp32", "bf16"}:
        parser.error("--trl-precisions: fp32 and/or bf16")

    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from rl_reasoning.config import load_config
    from rl_reasoning.models import resolve_model_dir
    from rl_reasoning.trainer import GRPOTrainer

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    total_steps = args.steps + args.warmup
    P, G, T = args.prompts, args.generations, args.max_tokens
    items = problems(P * total_steps)
    bench_dir = Path(__file__).resolve().parent
    if args.random_init:
        sys.path.insert(0, str(bench_dir))
        from gpu_check import random_model_dir

        model_dir = str(random_model_dir(args.random_init, Path(tempfile.mkdtemp()) / args.random_init))
    else:
        model_dir = resolve_model_dir("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    print(f"measuring the machine ({args.device}, {threads} threads) ...", flush=True)
    peaks = {"float32": measure_peak_gflops(device=args.device),
             "bfloat16": measure_peak_gflops(1024 if args.device == "cpu" else 4096, 3, torch.bfloat16, args.device)}
    bandwidth = measure_bandwidth_gbs(device=args.device)
    print(f"matmul peak fp32 {peaks['float32']:.1f} GFLOP/s, bf16 {peaks['bfloat16']:.1f} GFLOP/s; memory bandwidth {bandwidth:.1f} GB/s")

    # ---- ours
    sys.path.insert(0, str(bench_dir))
    overrides = [
        f"model.name={model_dir if args.random_init else 'smollm2-135m-instruct'}", "data.source=reasoning_gym", "data.eval_size=0",
        f"prompt.system_prompt={SYSTEM}", f"rollout.num_generations={G}", f"rollout.max_new_tokens={T}",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "grpo.loss_type=dapo", "grpo.scale_rewards=group",
        "grpo.epsilon=0.2", "grpo.epsilon_high=0.2", "grpo.beta=0.0", "grpo.num_iterations=1",
        f"optim.lr={args.lr}", "optim.adam_beta1=0.9", "optim.adam_beta2=0.999", "optim.weight_decay=0.0",
        "optim.max_grad_norm=1.0", "optim.warmup_steps=0", f"optim.micro_batch_size={G}",
        "eval.at_start=false", "eval.at_end=false", "rewards=[{name: 'step_vs_trl:hash_reward'}]", *args.override,
        f"prompts_per_step={P}", f"max_steps={total_steps}", f"threads={threads}",
    ]
    if any(o.startswith("optim.micro_batch_tokens=") for o in args.override):  # the budget plans the micro-batches
        overrides.remove(f"optim.micro_batch_size={G}")
    ours, our_steps, lengths_of, dtype_of = {}, {}, {}, {}
    measured_lengths: dict[str, list] = {}
    runs = len(trl_precisions)
    for backend in args.backends.split(","):
        for compute in args.compute_dtypes.split(","):
            name = f"{backend}/{compute}"
            extra = [f"rollout.backend={backend}", f"rollout.vllm.recompute_logprobs={str(args.vllm_recompute).lower()}",
                     f"model.compute_dtype={compute}",
                     f"output_dir={bench_dir / 'out' / time.strftime(f'step_vs_trl-{backend}-{compute}-%Y%m%d-%H%M%S')}"]
            trainer_ = GRPOTrainer(load_config(None, overrides[:-2] + [f"max_steps={total_steps * runs}", f"threads={threads}"] + extra),
                                   quiet=True)
            batches = iter([items[i : i + P] for _ in range(runs) for i in range(0, len(items), P)])
            trainer_.sampler.next_batch = lambda n, b=batches: next(b)  # the same prompts, in TRL's order (again for each TRL run)
            ours[name], our_steps[name], dtype_of[name], measured_lengths[name] = trainer_, [], trainer_.precision.name, []
            print(f"ours[{name}]: {trainer_.precision.describe()}", flush=True)
            record_lengths(trainer_.engine, lengths_of.setdefault(name, []))

    # ---- TRL, once per precision, ours alternating
    data = datasets.Dataset.from_list(
        [{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p["question"]}]} for p in items]
    )
    W = args.warmup
    trl_runs, n_params = {}, 0
    for prec in trl_precisions:
        trl_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        n_params = sum(p.numel() for p in trl_model.parameters())
        config = trl.GRPOConfig(
            output_dir=str(bench_dir / "out" / "trl"), per_device_train_batch_size=P * G, num_generations=G,
            max_completion_length=T, max_steps=total_steps, learning_rate=args.lr, lr_scheduler_type="constant",
            adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0, max_grad_norm=1.0, temperature=1.0, top_p=1.0, top_k=0,
            loss_type="dapo", scale_rewards="group", epsilon=0.2, beta=0.0, num_iterations=1,
            gradient_checkpointing=False, bf16=prec == "bf16", fp16=False, use_cpu=args.device == "cpu", report_to=[], save_strategy="no",
            logging_steps=1, shuffle_dataset=False, seed=0, dataloader_num_workers=0,
        )
        trainer = trl.GRPOTrainer(model=trl_model, reward_funcs=[hash_reward], args=config, train_dataset=data, processing_class=tokenizer)
        trl_steps: list[dict] = []
        generate = trainer._generate_and_score_completions
        gen_time = {"s": 0.0}

        def timed_generate(*a, generate=generate, gen_time=gen_time, **kw):
            start = time.perf_counter()
            out = generate(*a, **kw)
            gen_time["s"] += time.perf_counter() - start
            return out

        trainer._generate_and_score_completions = timed_generate

        class Alternate(TrainerCallback):
            def __init__(self, prec, trl_steps, gen_time):
                self.prec, self.trl_steps, self.gen_time = prec, trl_steps, gen_time

            def on_step_begin(self, *_, **__):
                self.gen_time["s"] = 0.0
                self.start = time.perf_counter()

            def on_step_end(self, *_, **__):
                step_s = time.perf_counter() - self.start
                self.trl_steps.append({"step": step_s, "generation": self.gen_time["s"], "update": step_s - self.gen_time["s"]})
                line = f"step {len(self.trl_steps)}: TRL[{self.prec}] {step_s:.1f} s (gen+reward {self.gen_time['s']:.1f})"
                for name, trainer_ in ours.items():
                    m = trainer_.train_step()
                    trainer_.step += 1
                    if len(self.trl_steps) > W:
                        our_steps[name].append(m)
                        measured_lengths[name].append(lengths_of[name][-1])  # this step's rollout
                    line += (f" | ours[{name}] {m['time/step']:.1f} s (gen {m['time/generation']:.1f}, "
                             f"old log-probs {m.get('time/old_logprobs', 0):.1f}, reward {m['time/reward']:.2f}, update {m['time/update']:.1f})")
                print(line, flush=True)

        trainer.add_callback(Alternate(prec, trl_steps, gen_time))
        trainer.train()
        logs = [e for e in trainer.state.log_history if "completions/mean_length" in e]
        trl_runs[prec] = (trl_steps[W:], logs[W:])

    # ---- report
    prompt_tokens = [
        len(tokenizer(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"])
        for row in data
    ]
    for name in ours:
        report(name, dtype_of[name], our_steps[name], trl_runs, prompt_tokens, n_params, peaks, bandwidth, threads, args,
               measured_lengths[name])
    if len(ours) > 1:
        print("\n== ours against ours ==\n\n| ours | step (s) | generation + reward (s) | update (s) | generated tokens/s |\n|---|---|---|---|---|")
        for name, steps in our_steps.items():
            gen = med([m["time/generation"] + m.get("time/old_logprobs", 0) + m["time/reward"] for m in steps])
            print(f"| {name} ({dtype_of[name]}) | {med([m['time/step'] for m in steps]):.1f} | {gen:.1f} | "
                  f"{med([m['time/update'] for m in steps]):.1f} | {med([m['tokens/generated'] for m in steps]) / gen:.0f} |")


def record_lengths(engine, into: list) -> None:
    """Keep each rollout's completion lengths (for the per-step generation floor)."""
    generate = engine.generate

    def recorded(*a, **kw):
        batch = generate(*a, **kw)
        into.append(batch.lengths.tolist())
        return batch

    engine.generate = recorded


def decode_floor_seconds(lengths: list[int], n_params: int, peak: float, bandwidth: float, bytes_per_weight: int = 4) -> float:
    """Sum over decode steps t of max(FLOPs of the m_t rows still running / peak, one read of the
    weights / bandwidth): each step must read every weight once, however few rows remain."""
    floor = 0.0
    for t in range(max(lengths)):
        running = sum(1 for n in lengths if n > t)
        floor += max(2 * n_params * running / (peak * 1e9), n_params * bytes_per_weight / (bandwidth * 1e9))
    return floor


def med(xs):
    return statistics.median(xs)


def report(name, dtype, ours_m, trl_runs, prompt_tokens, n_params, peaks, bandwidth, threads, args, lengths) -> None:
    """Ours (`name`, computing in `dtype`) against every TRL run and against the fastest one."""
    P, G, T, W = args.prompts, args.generations, args.max_tokens, args.warmup
    peak = peaks[dtype]
    bytes_per_weight = 2 if dtype == "bfloat16" else 4
    ours = {
        "generation + reward (s)": med([m["time/generation"] + m.get("time/old_logprobs", 0) + m["time/reward"] for m in ours_m]),
        "update (s)": med([m["time/update"] for m in ours_m]),
        "step (s)": med([m["time/step"] for m in ours_m]),
    }
    trl = {prec: {"generation + reward (s)": med([s["generation"] for s in steps]), "update (s)": med([s["update"] for s in steps]),
                  "step (s)": med([s["step"] for s in steps]),
                  "tokens": med([e["completions/mean_length"] * P * G for e in logs]) if logs else float("nan")}
           for prec, (steps, logs) in trl_runs.items()}
    fastest = min(trl, key=lambda prec: trl[prec]["step (s)"])
    our_gen_tokens = med([m["tokens/generated"] for m in ours_m])
    mean_prompt = statistics.mean(prompt_tokens)

    def flops(gen_tokens):  # the FLOPs a step needs: prompt once per group, every token once
        return 2 * n_params * (P * mean_prompt + gen_tokens), 6 * n_params * (P * mean_prompt + gen_tokens)

    og, ou = flops(our_gen_tokens)
    mem_floor = T * n_params * bytes_per_weight / (bandwidth * 1e9)

    print(f"\n== ours[{name}], computing in {dtype} ==")
    model = f"random-init {args.random_init} shape" if args.random_init else "SmolLM2-135M-Instruct"
    print(f"{model} on {args.device}, fp32 master weights, {threads} threads, {P} prompts x {G} generations, <= {T} new tokens, "
          f"prompt {mean_prompt:.0f} tokens; median of {len(ours_m)} steps of ours and {args.steps} of each TRL run, after {W} warm-up")
    print(f"generated tokens per step: ours {our_gen_tokens:.0f}, " + ", ".join(f"TRL[{p}] {t['tokens']:.0f}" for p, t in trl.items())
          + " (different samples, same settings)\n")
    print("| phase | ours | " + " | ".join(f"TRL[{p}] | TRL[{p}] / ours" for p in trl) + " |")
    print("|---|---|" + "---|---|" * len(trl))
    for phase, a in ours.items():
        print(f"| {phase} | {a:.1f} | " + " | ".join(f"{t[phase]:.1f} | {t[phase] / a:.2f}x" for t in trl.values()) + " |")
    print(f"| generated tokens/s | {our_gen_tokens / ours['generation + reward (s)']:.0f} | "
          + " | ".join(f"{t['tokens'] / t['generation + reward (s)']:.0f} | " for t in trl.values()) + " |")
    print(f"| update MFU (vs the {dtype} peak) | {ou / ours['update (s)'] / (peak * 1e9):.0%} | "
          + " | ".join(f"{flops(t['tokens'])[1] / t['update (s)'] / (peaks['bfloat16' if p == 'bf16' else 'float32'] * 1e9):.0%} | "
                       for p, t in trl.items()) + " |")
    gen_floor = max(og / (peak * 1e9), mem_floor)
    print(f"\ngeneration floor (ours): max(FLOPs {og / (peak * 1e9):.1f} s, weight reads {mem_floor:.1f} s for {T} decode steps) "
          f"= {gen_floor:.1f} s; ours takes {ours['generation + reward (s)'] / gen_floor:.1f}x the floor")
    prefill = 2 * n_params * P * mean_prompt / (peak * 1e9)
    step_floor = med([prefill + decode_floor_seconds(n, n_params, peak, bandwidth, bytes_per_weight) for n in lengths])
    print(f"generation floor per decode step (ours): sum over steps of max(FLOPs of the rows still running, one weight read) "
          f"+ prefill = {step_floor:.1f} s; ours takes {ours['generation + reward (s)'] / step_floor:.1f}x it")
    print(f"update floor (ours): {ou / (peak * 1e9):.1f} s at peak")
    print(f"step throughput ours / the fastest TRL (TRL[{fastest}]): **{trl[fastest]['step (s)'] / ours['step (s)']:.2f}x**")


if __name__ == "__main__":
    main()
