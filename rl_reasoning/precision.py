"""Mixed precision: fp32 master weights, and a compute dtype chosen per device (measured on CPU).

Training always keeps the weights the optimizer updates, and AdamW's moments, in float32. A
bf16 weight cannot take a small step: at |w| ~ 0.02 its spacing is ~1e-4, so an update of
lr 1e-6 rounds away and only ~0.4 % of SmolLM2's weights move (measured on CUDA, issue #33).
What runs in the compute dtype (`model.compute_dtype`):
- the update's forward and backward: `torch.autocast`, so matmuls run in bf16 while the
  masters, gradients, log-softmax, log-probs, entropies, losses and advantages stay fp32
  (logprobs.py upcasts the logits before any of them);
- sampling (our engine, evaluation, multi-turn rollouts): `SamplingCopy`, a frozen bf16 copy
  of the policy, refreshed from the masters after every optimizer step (the masters never
  leave fp32). Under FSDP/DeepSpeed, where a copy of the sharded module cannot be made, the
  engine runs the gathered fp32 policy under autocast instead;
- frozen models that only sample or score (the on-policy teacher, `eval`'s model): cast once.
  The KL reference stays fp32 and runs under the update's autocast, as the policy does, so the
  KL is exactly 0 before the first step.
An accelerate config with `mixed_precision: bf16` (our DeepSpeed configs) decides instead: the
engine then owns the bf16 copy, and `model.compute_dtype: float32` beside it is an error.

`auto` picks bf16 on CUDA when the GPU computes it (compute capability >= 8.0, i.e. Ampere and
later; older GPUs keep fp32, since fp16 would need loss scaling we do not implement). On CPU it
measures: `probe_cpu` times a few matmuls at the model's shapes in both dtypes (well under a
second; cached per machine in the model cache) and picks bf16 only when it is clearly faster
(`CLEARLY_FASTER`). CPUs with AVX512_BF16 or AMX compute bf16 2-3x faster than fp32; AVX2-only
CPUs emulate it and run it ~5x slower (measured, docs/performance.md), so the choice must be
made on the machine.

Departure from TRL: TRL's `bf16=True` (its default) autocasts the update the same way and
samples with vLLM in the dtype vLLM is given; here vLLM (`rollout.backend: vllm`) is given the
compute dtype too, and our own engine samples on `SamplingCopy`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

CLEARLY_FASTER = 1.2  # bf16 is chosen on CPU only when its matmuls are at least this much faster than fp32's
PROBE_ROWS = (16, 256)  # decode-like and update-like row counts
PROBE_REPEATS = 5
CACHE_FILE = "precision_probe.json"


@dataclass
class Precision:
    """The run's compute dtype and why it was chosen (logged in the summary and first metrics line)."""

    compute: torch.dtype
    reason: str
    probe: dict = field(default_factory=dict)  # CPU: {"fp32_ms", "bf16_ms", "bf16_speedup", "cached"}

    @property
    def half(self) -> bool:
        return self.compute != torch.float32

    @property
    def name(self) -> str:
        return str(self.compute).removeprefix("torch.")

    def autocast(self, device: torch.device | str, enabled: bool = True):
        """The context the update's forward runs in: autocast to the compute dtype, or nothing in fp32."""
        device_type = torch.device(device).type
        if not (enabled and self.half):
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.compute)

    def record(self) -> dict:
        """The summary's `precision` entry."""
        return {"master_dtype": "float32", "compute_dtype": self.name, "reason": self.reason, **({"probe": self.probe} if self.probe else {})}

    def metrics(self) -> dict:
        """The first metrics line's fields (numbers only, for the trackers); the probe's timings
        under time/, with the other timings that differ between otherwise identical runs."""
        out = {"precision/bf16_compute": float(self.half)}
        for key in ("fp32_ms", "bf16_ms", "bf16_speedup"):
            if key in self.probe:
                out[f"time/precision_probe_{key}"] = self.probe[key]
        return out

    def describe(self) -> str:
        """One line for the terminal."""
        return f"precision: float32 master weights, {self.name} compute ({self.reason})"


def choose_on_cpu(fp32_ms: float, bf16_ms: float) -> bool:
    """True when bf16 matmuls are clearly faster (by CLEARLY_FASTER) than fp32's."""
    return bf16_ms * CLEARLY_FASTER <= fp32_ms


def cuda_computes_bf16(device: torch.device) -> bool:
    """bf16 tensor cores: compute capability 8.0 (Ampere) or later."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def probe_cpu(hidden: int, intermediate: int, repeats: int = PROBE_REPEATS) -> dict:
    """Median time (ms) of x @ W^T with W (intermediate, hidden) at PROBE_ROWS rows, summed over the
    row counts, in fp32 and in bf16, on the current thread count."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(intermediate, hidden, generator=gen) * 0.02
    result = {}
    for dtype, key in ((torch.float32, "fp32_ms"), (torch.bfloat16, "bf16_ms")):
        w = weight.to(dtype)
        total = 0.0
        for rows in PROBE_ROWS:
            x = torch.randn(rows, hidden, generator=gen).to(dtype)
            torch.nn.functional.linear(x, w)  # warm-up (first-call dispatch, oneDNN primitive creation)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                torch.nn.functional.linear(x, w)
                times.append(time.perf_counter() - start)
            total += sorted(times)[len(times) // 2] * 1e3
        result[key] = round(total, 4)
    result["bf16_speedup"] = round(result["fp32_ms"] / max(result["bf16_ms"], 1e-9), 3)
    return result


def machine_signature(hidden: int, intermediate: int) -> str:
    """What a cached probe is valid for: CPU model and bf16-related flags, torch, threads, shapes."""
    cpu, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name") and cpu in ("", "x86_64"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = " ".join(sorted(f for f in line.split(":", 1)[1].split() if "bf16" in f or "avx512" in f or "amx" in f))
                break
    except OSError:
        pass
    text = f"{cpu}|{flags}|{torch.__version__}|{torch.get_num_threads()}|{hidden}x{intermediate}|{PROBE_ROWS}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_probe(hidden: int, intermediate: int, cache_dir: Path | None) -> dict:
    """`probe_cpu`, read from / written to `cache_dir/precision_probe.json` (keyed by
    `machine_signature`); an unreadable or malformed cache is ignored and rewritten."""
    key = machine_signature(hidden, intermediate)
    path = cache_dir / CACHE_FILE if cache_dir is not None else None
    cache = {}
    if path is not None and path.is_file():
        try:
            cache = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8 / JSON, or nested past the parser's limit
            cache = {}
        if not isinstance(cache, dict):
            cache = {}
        entry = cache.get(key)
        if isinstance(entry, dict) and all(_positive_number(entry.get(k)) for k in ("fp32_ms", "bf16_ms", "bf16_speedup")):
            return {**{k: float(entry[k]) for k in ("fp32_ms", "bf16_ms", "bf16_speedup")}, "cached": True}
    result = probe_cpu(hidden, intermediate)
    if path is not None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({**{k: v for k, v in cache.items() if isinstance(v, dict)}, key: result}, indent=1))
            tmp.replace(path)
        except (OSError, TypeError, ValueError):
            pass  # a read-only cache, or one holding what JSON cannot write back: the probe simply runs again next time
        finally:
            tmp.unlink(missing_ok=True)
    return {**result, "cached": False}


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def resolve_precision(setting: str, device: torch.device | str, model_config=None, cache_dir: Path | None = None) -> Precision:
    """The compute dtype for `model.compute_dtype` = `setting` on `device`. `model_config` (a
    transformers config) gives the probe its shapes (hidden_size, intermediate_size)."""
    device = torch.device(device)
    if setting == "float32":
        return Precision(torch.float32, "model.compute_dtype: float32")
    if setting == "bfloat16":
        return Precision(torch.bfloat16, "model.compute_dtype: bfloat16")
    if setting != "auto":
        raise ValueError(f"compute dtype must be auto, float32 or bfloat16, got {setting!r}")
    if device.type == "cuda":
        if cuda_computes_bf16(device):
            return Precision(torch.bfloat16, "auto: the GPU computes bf16 (compute capability >= 8.0)")
        return Precision(torch.float32, "auto: the GPU has no bf16 tensor cores (compute capability < 8.0)")
    if device.type != "cpu":
        return Precision(torch.float32, f"auto: float32 on {device.type}")
    hidden = int(getattr(model_config, "hidden_size", 576) or 576)
    intermediate = int(getattr(model_config, "intermediate_size", 4 * hidden) or 4 * hidden)
    probe = cached_probe(hidden, intermediate, cache_dir)
    faster = choose_on_cpu(probe["fp32_ms"], probe["bf16_ms"])
    how = "cached probe" if probe.get("cached") else "probe"
    verdict = (f"bf16 matmuls {probe['bf16_speedup']:.2f}x as fast as fp32" if faster else
               f"bf16 matmuls {probe['bf16_speedup']:.2f}x as fast as fp32, not the {CLEARLY_FASTER}x needed")
    return Precision(torch.bfloat16 if faster else torch.float32, f"auto, CPU {how}: {verdict}", probe)


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model` with its floating-point parameters in `dtype`, in place. Buffers keep their dtype
    (`model.to(dtype)` would also round RoPE's inverse frequencies, which transformers computes
    in fp32 and casts per call)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model


def run_precision(setting: str, device, model, cache_dir: str | None = None) -> Precision:
    """`resolve_precision` for a loaded model, with the probe cached beside the converted models."""
    from .models import cache_root

    return resolve_precision(setting, device, getattr(model, "config", None), cache_root(cache_dir))


class SamplingCopy:
    """A frozen copy of the policy in the compute dtype, for sampling; `refreshed(policy, version)`
    copies the masters' trainable weights into it when `version` (the optimizer-step count) moved,
    or after `invalidate()` (the masters were loaded from a checkpoint). Frozen weights (a LoRA
    base) are copied once, at construction."""

    def __init__(self, policy: torch.nn.Module, dtype: torch.dtype):
        self.model = cast_parameters(copy.deepcopy(policy), dtype).eval().requires_grad_(False)
        self.version: int | None = None

    def invalidate(self) -> None:
        self.version = None

    @torch.no_grad()
    def refreshed(self, policy: torch.nn.Module, version: int) -> torch.nn.Module:
        if version != self.version:
            for mine, master in zip(self.model.parameters(), policy.parameters(), strict=True):
                if master.requires_grad:
                    mine.copy_(master)
            self.version = version
        return self.model
