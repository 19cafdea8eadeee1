"""One command for a GPU: what our rollout engine and update do on CUDA, written as JSON.

    bash bench/gpu_check.sh                       # on the device machine (see ../shared/device/README.md)
    python bench/gpu_check.py --dry-run --out F   # anywhere: the same code on CPU with tiny shapes (CI runs it)

Needs only torch and transformers (plus this checkout). Sections, each written to the JSON as it
finishes (a timeout keeps what was measured):
1. versions, GPU name and capability;
2. decode at `--rows` rows (G = 8, prompt `--prompt-len` random tokens, `--new-tokens` steps; a
   random-init model samples to the cap, the fair case for throughput): the dynamic engine, the
   static decode eager and the static decode as a CUDA graph. Per variant: ms per step (a whole
   rollout timed with CUDA events ÷ steps), tok/s, achieved GB/s (weights + the K/V the step
   attends over, ÷ step time), and the capture time; for the static step also the median of 20
   single steps timed with CUDA events, and kernel launches per step from torch.profiler;
3. equivalence: eager vs graphed static decode from the same seed (tokens equal, max |Δ logp|),
   and the dynamic engine against the static one (share of equal tokens, max |Δ logp| where equal);
4. one update (`--rows` / 8 prompts × 8, completions of half to all of `--new-tokens`, fp32 master weights,
   compute-dtype autocast, AdamW) for three plans: prefix grouping with 8-row micro-batches,
   8-row micro-batches without grouping, and a token budget (on CUDA the one `auto` picks); forward, backward (and the rest) and optimizer
   seconds, micro-batches and peak memory;
5. stale weights: the share of weights one AdamW step at lr 1e-6 moves, fp32 masters vs pure
   bf16 weights, and |rollout log p − teacher-forced log p| of the bf16 sampler against the
   update's autocast forward;
6. bench/step_vs_trl.py on a random-init model of the same shape, when TRL is importable.

The shape: `--shape 135m` is SmolLM2-135M's (hidden 576, 30 layers, 9/3 heads, MLP 1536, the
SmolLM2 tokenizer from `.device/tok` or the converted model); `--dry-run` uses `tiny`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {"135m": (576, 30, 9, 3, 1536), "tiny": (64, 2, 4, 2, 128)}  # hidden, layers, heads, kv heads, MLP


def tokenizer_dir() -> str:
    """The SmolLM2 tokenizer and config: the device pack's copy, else the converted model's."""
    packed = ROOT / ".device" / "tok"
    if (packed / "tokenizer.json").exists():
        return str(packed)
    from rl_reasoning.models import resolve_model_dir

    return str(resolve_model_dir("smollm2-135m-instruct"))


def random_model_dir(shape: str, out: Path) -> Path:
    """A random-init Llama of `shape` with the SmolLM2 tokenizer, saved to `out` (no weights needed)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hidden, layers, heads, kv, mlp = SHAPES[shape]
    config = AutoConfig.from_pretrained(tokenizer_dir())
    config.hidden_size, config.num_hidden_layers, config.num_attention_heads = hidden, layers, heads
    config.num_key_value_heads, config.intermediate_size, config.head_dim = kv, mlp, hidden // heads
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir()).save_pretrained(out)
    return out


class Clock:
    """Wall time of a block on `device`: CUDA events on a GPU, perf_counter on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1e3
        else:
            self.seconds = time.perf_counter() - self.t0


def versions(device: torch.device) -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        out["driver_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    else:
        out["cpu"] = platform.processor() or platform.machine()
        out["threads"] = torch.get_num_threads()
    return out


def launches_per_step(step, steps: int = 3) -> dict:
    """cudaLaunchKernel / cudaGraphLaunch calls per step, from torch.profiler over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    counts = {e.key: e.count for e in prof.key_averages()}
    return {name: counts.get(name, 0) / steps for name in ("cudaLaunchKernel", "cudaGraphLaunch", "cudaMemcpyAsync")}


def decode_section(model, tok, device, rows: int, prompt_len: int, new_tokens: int, seed: int = 0) -> tuple[dict, dict]:
    """Decode timings per variant, and the rollouts (for the equivalence section)."""
    from rl_reasoning.config import RolloutConfig
    from rl_reasoning.rollout import RolloutEngine

    G = 8
    P = rows // G
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(100, len(tok) - 1, (P, prompt_len), generator=gen).tolist()
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    elem = next(model.parameters()).element_size()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_per_column = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * elem  # bytes of K and V per row and column
    variants = {"dynamic": dict(static_decode=False), "static_eager": dict(static_decode=True, cuda_graphs=False)}
    if device.type == "cuda":
        variants["static_graph"] = dict(static_decode=True, cuda_graphs=True)
    out, batches = {}, {}
    for name, settings in variants.items():
        engine = RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id)
        params = RolloutConfig(num_generations=G, max_new_tokens=new_tokens, temperature=1.0, **settings)
        times = []
        with warnings.catch_warnings(record=True) as caught:  # a failed capture warns once and decodes eagerly
            warnings.simplefilter("always")
            for _ in range(3):  # the first includes allocation and (graph) capture
                with Clock(device) as clock:
                    batch = engine.generate(prompts, params, torch.Generator(device=device).manual_seed(seed))
                times.append(clock.seconds)
        batches[name] = batch
        steps = int(batch.lengths.max())
        tokens = int(batch.lengths.sum())
        steady = statistics.median(times[1:])
        columns = prompt_len + (new_tokens if settings.get("static_decode") else steps / 2)  # attended per step, on average
        step_s = steady / steps
        entry = {"rollout_s": round(steady, 4), "first_rollout_s": round(times[0], 4), "steps": steps, "tokens": tokens,
                 "ms_per_step": round(1e3 * step_s, 3), "tok_per_s": round(tokens / steady, 1),
                 "achieved_gb_per_s": round((n_params * elem + rows * columns * kv_per_column) / step_s / 1e9, 2)}
        entry["warnings"] = sorted({str(w.message)[:300] for w in caught if "graph" in str(w.message).lower()})
        if settings.get("static_decode"):
            (decoder,) = engine._decoders.values()
            entry["capture_s_est"] = round(max(times[0] - steady, 0.0), 4)
            entry["graph_captures"] = decoder.runner.captures  # 1 on CUDA: the three rollouts replay one graph
            decoder.prepare(prompts, params, torch.Generator(device=device).manual_seed(seed), 0, rows)
            single = []
            for _ in range(min(20, new_tokens)):
                with Clock(device) as clock:
                    decoder.runner()
                single.append(clock.seconds)
            entry["single_step_ms_median"] = round(1e3 * statistics.median(single), 3)
            if device.type == "cuda":
                decoder.prepare(prompts, params, torch.Generator(device=device).manual_seed(seed), 0, rows)
                entry["launches_per_step"] = launches_per_step(decoder.runner)
        out[name] = entry
        print(f"decode {name}: {entry}", flush=True)
    return out, batches


def equivalence_section(batches: dict) -> dict:
    def compare(a, b) -> dict:
        width = min(a.completion_ids.shape[1], b.completion_ids.shape[1])
        both = (a.completion_mask[:, :width] * b.completion_mask[:, :width]).bool()
        same = (a.completion_ids[:, :width] == b.completion_ids[:, :width]) & both
        first_diff = (~same & both).float().argmax(-1)  # (N,) first differing column (0 if none)
        prefix = torch.where((~same & both).any(-1), first_diff, both.sum(-1))  # (N,) tokens equal before the first difference
        cols = torch.arange(width)[None, :] < prefix[:, None]
        dlogp = (a.logprobs[:, :width] - b.logprobs[:, :width]).abs()[cols]
        return {"rows_identical": int(torch.equal(a.completion_ids, b.completion_ids) and a.completion_ids.shape == b.completion_ids.shape),
                "equal_prefix_share": round(float(prefix.sum()) / max(int(both.sum()), 1), 4),
                "max_abs_dlogp_on_equal_prefix": round(float(dlogp.max()) if dlogp.numel() else 0.0, 6)}

    out = {"dynamic_vs_static_eager": compare(batches["dynamic"], batches["static_eager"])}
    if "static_graph" in batches:
        out["static_eager_vs_graph"] = compare(batches["static_eager"], batches["static_graph"])
    return out


def synthetic_rollout(vocab: int, P: int, G: int, prompt_len: int, new_tokens: int, seed: int = 0):
    from rl_reasoning.engine import RolloutBatch

    gen = torch.Generator().manual_seed(seed)
    N = P * G
    prompt_ids = torch.randint(100, vocab - 1, (P, prompt_len), generator=gen).repeat_interleave(G, 0)
    lengths = torch.randint(new_tokens // 2, new_tokens + 1, (N,), generator=gen)
    completion_ids = torch.randint(100, vocab - 1, (N, new_tokens), generator=gen)
    mask = (torch.arange(new_tokens)[None] < lengths[:, None]).long()
    return RolloutBatch(prompt_ids, torch.ones_like(prompt_ids), completion_ids, mask, torch.zeros(N, new_tokens) - 5.0,
                        torch.zeros(N, new_tokens), torch.zeros(N, dtype=torch.bool), [""] * N, G)


def update_section(model_dir: str, device, rows: int, new_tokens: int, prompt_len: int) -> dict:
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from rl_reasoning.config import load_config
    from rl_reasoning.distributed import Collective
    from rl_reasoning.precision import Precision
    from rl_reasoning.update import AUTO_MICRO_BATCH_TOKENS, PolicyUpdate, optimizer_and_scheduler

    G = 8
    P = max(rows // G, 1)
    rollout = synthetic_rollout(AutoModelForCausalLM.from_pretrained(model_dir).config.vocab_size, P, G, prompt_len, new_tokens)
    N = P * G
    advantages = torch.randn(N, generator=torch.Generator().manual_seed(1))
    mask, dropped = rollout.completion_mask.clone(), torch.zeros(N, dtype=torch.bool)
    budget = AUTO_MICRO_BATCH_TOKENS if device.type == "cuda" else 2 * max(64, (N * (prompt_len + new_tokens)) // 4)  # CPU: ~two passes
    plans = {"grouped_rows8": ["optim.prefix_grouping=true", "optim.micro_batch_size=8"],
             "plain_rows8": ["optim.prefix_grouping=false", "optim.micro_batch_size=8"],
             f"plain_tokens{budget}": ["optim.prefix_grouping=false", f"optim.micro_batch_tokens={budget}"]}
    precision = Precision(torch.bfloat16 if device.type == "cuda" else torch.float32, "gpu_check")
    accelerator = Accelerator(cpu=device.type != "cuda")
    out = {"rows": N, "prompt_len": prompt_len, "trained_tokens": int(mask.sum()), "compute_dtype": precision.name}
    for name, overrides in plans.items():
        cfg = load_config(None, [f"rollout.max_new_tokens={new_tokens}", "grpo.loss_type=dapo", "optim.lr=1e-6", *overrides])
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
        optimizer, scheduler = optimizer_and_scheduler(model, cfg)
        update = PolicyUpdate(cfg, accelerator, model, optimizer, scheduler, Collective(accelerator), moe=None, precision=precision)
        runs = [timed_update(update, model, optimizer, device, rollout, advantages, mask, dropped) for _ in range(3)]  # the first warms up
        best = min(runs[1:], key=lambda r: r["update_s"])
        out[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in best.items()}
        print(f"update {name}: {out[name]}", flush=True)
        del model, optimizer, update
    return out


class Marks:
    """Start/end marks around calls, read after the timed block: CUDA events recorded without a
    sync (the update keeps running ahead of the host), or perf_counter on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda, self.pairs = device.type == "cuda", []

    def start(self, *_):
        self.pairs.append([self._now(), None])

    def end(self, *_):
        self.pairs[-1][1] = self._now()

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.pairs) / 1e3
        return sum(b - a for a, b in self.pairs)


def timed_update(update, model, optimizer, device, rollout, advantages, mask, dropped) -> dict:
    """One PolicyUpdate call: its wall time, forward and optimizer time (marks around the model's
    forward and optimizer.step), backward and the rest (log-probs, loss, copies) = the remainder, micro-batches and peak memory."""
    forward, optim = Marks(device), Marks(device)
    hooks = [model.register_forward_pre_hook(forward.start), model.register_forward_hook(forward.end)]
    step = optimizer.step

    def marked_step(*a, **kw):
        optim.start()
        result = step(*a, **kw)
        optim.end()
        return result

    optimizer.step = marked_step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with Clock(device) as clock:
            stats = update(rollout, advantages, mask, dropped)
    finally:
        optimizer.step = step
        for hook in hooks:
            hook.remove()
    f, o = forward.seconds(), optim.seconds()
    return {"update_s": clock.seconds, "forward_s": f, "optimizer_s": o, "backward_and_rest_s": clock.seconds - f - o,
            "micro_batches": stats["micro_batches"],
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}


def stale_weight_section(model_dir: str, device, batch) -> dict:
    """Share of weights one AdamW step at lr 1e-6 moves: fp32 masters vs pure bf16 weights, same
    gradient; and the sampler/update log-prob gap of a bf16 rollout."""
    from transformers import AutoModelForCausalLM

    from rl_reasoning.logprobs import completion_logprobs

    master = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    ids = batch.completion_ids[:8].to(device)
    loss = master(input_ids=ids, labels=ids).loss
    loss.backward()
    out = {}
    for name, dtype in (("fp32_masters", torch.float32), ("pure_bf16", torch.bfloat16)):
        params = [p.detach().clone().to(dtype).requires_grad_(True) for p in master.parameters()]
        for p, m in zip(params, master.parameters()):
            p.grad = m.grad.to(dtype)
        before = [p.detach().clone() for p in params]
        torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0).step()
        moved = sum(int((p.detach() != b).sum()) for p, b in zip(params, before))
        out[f"{name}_moved_share"] = round(moved / sum(b.numel() for b in before), 4)
    master.zero_grad(set_to_none=True)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logp = completion_logprobs(master, batch.prompt_ids.to(device), batch.prompt_mask.to(device), batch.completion_ids.to(device),
                                   batch.completion_mask.to(device), 1.0).float().cpu()
    gap = (logp - batch.logprobs).abs()[batch.completion_mask.bool()]
    out["sampler_vs_update_logp_abs_mean"] = round(float(gap.mean()), 5)
    out["sampler_vs_update_logp_abs_max"] = round(float(gap.max()), 5)
    return out


def trl_section(dry: bool, shape: str) -> dict:
    try:
        import trl  # noqa: F401
    except ImportError as error:
        return {"skipped": f"TRL is not importable ({error})"}
    device = "cpu" if dry else "cuda"
    small = ["--steps", "1", "--warmup", "0", "--prompts", "1", "--generations", "2", "--max-tokens", "8"] if dry else \
        ["--steps", "3", "--warmup", "1", "--prompts", "16", "--generations", "8", "--max-tokens", "256"]
    command = [sys.executable, str(ROOT / "bench" / "step_vs_trl.py"), "--device", device, "--random-init", shape,
               "--trl-precisions", "fp32" if dry else "bf16", *small]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = (result.stdout + result.stderr).strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    return {"command": " ".join(command[1:]), "returncode": result.returncode, "seconds": round(time.perf_counter() - start, 1),
            "table": table, "tail": lines[-8:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: the code path only (CI)")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: 135m (tiny with --dry-run)")
    parser.add_argument("--rows", type=int, default=None, help="decode rows (default 128; 16 with --dry-run)")
    parser.add_argument("--prompt-len", type=int, default=None, help="default 100 (12 with --dry-run)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 256 (12 with --dry-run)")
    parser.add_argument("--skip", default="", help="sections to skip, comma-separated: decode, update, stale, trl")
    args = parser.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run to run the code path on CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if dry else "cuda")
    shape = args.shape or ("tiny" if dry else "135m")
    rows, prompt_len, new_tokens = args.rows or (16 if dry else 128), args.prompt_len or (12 if dry else 100), args.new_tokens or (12 if dry else 256)
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"dry_run": dry, "shape": shape, "versions": versions(device)}
    out_path = Path(args.out)

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1))

    save()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(random_model_dir(shape, Path(tmp) / shape))
        tok = AutoTokenizer.from_pretrained(model_dir)
        sampling_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=sampling_dtype).to(device).eval()
        batches = {}
        if "decode" not in skip:
            started = time.perf_counter()
            report["decode"], batches = decode_section(model, tok, device, rows, prompt_len, new_tokens)
            report["equivalence"] = equivalence_section(batches)
            report["decode_section_s"] = round(time.perf_counter() - started, 1)
            save()
        del model
        if "update" not in skip:
            started = time.perf_counter()
            report["update"] = update_section(model_dir, device, rows, new_tokens, prompt_len)
            report["update_section_s"] = round(time.perf_counter() - started, 1)
            save()
        if "stale" not in skip and batches:
            report["stale_weights"] = stale_weight_section(model_dir, device, batches.get("static_graph", batches["static_eager"]))
            print(f"stale weights: {report['stale_weights']}", flush=True)
            save()
    if "trl" not in skip:
        report["step_vs_trl"] = trl_section(dry, shape)
        save()
    print(f"gpu_check: wrote {out_path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
