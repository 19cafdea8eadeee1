"""Cross-process plumbing for data-parallel training under `accelerate launch`.

How a step is split: every process draws the same global batch
of B prompts from the seeded sampler and keeps the contiguous slice
[rank * B/W, (rank + 1) * B/W), so the G completions of a prompt always live on one process.
Rewards are computed where the completions are; the reward totals are then all-gathered so
that advantages (including `scale_rewards: batch`) are computed on the global batch, exactly as
a single process would. Loss normalisers use global counts; metrics and traces are built from
gathered per-completion values, and only rank 0 writes files. Every helper is the identity in a
single process.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, UserError


@dataclass(frozen=True)
class Shard:
    rank: int
    world: int

    def prompt_slice(self, num_prompts: int) -> slice:
        per = num_prompts // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def row_slice(self, num_rows: int) -> slice:
        """This process's rows of a gathered (num_rows,) tensor."""
        per = num_rows // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


class Collective:
    """Gather/reduce over the processes of an `accelerate.Accelerator` (no-ops when W = 1)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.shard = Shard(accelerator.process_index, accelerator.num_processes)

    @property
    def world(self) -> int:
        return self.shard.world

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) on every process -> (W * n,) in rank order, on the CPU."""
        if self.world == 1:
            return x
        return self.accelerator.gather(x.to(self.accelerator.device).contiguous()).cpu()

    def gather_objects(self, items: list) -> list:
        """Concatenate a list from every process, in rank order."""
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.accelerator.device)
        t = self.accelerator.reduce(t, reduction="sum").cpu()
        return {k: float(v) for k, v in zip(keys, t)}

    def max(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return dict(values)
        gathered = self.gather_objects([values])
        return {k: max(d[k] for d in gathered) for k in values}

    def mean_of_dicts(self, values: dict[str, dict]) -> dict[str, dict]:
        """Average nested {name: {key: float}} (reward-reported metrics) over processes."""
        if self.world == 1:
            return values
        gathered = self.gather_objects([values])
        return {
            name: {key: sum(float(d[name][key]) for d in gathered) / len(gathered) for key in inner}
            for name, inner in values.items()
        }

    def parameter_checksums(self, model) -> list[float]:
        """One float64 sum of |w| + w over all parameters per process: unequal values mean the
        replicas have drifted apart (a DDP bug that otherwise goes unnoticed)."""
        with torch.no_grad():
            local = sum(float(p.detach().double().abs().sum() + p.detach().double().sum()) for p in model.parameters())
        return [float(v) for v in self.gather_objects([local])]


def start_accelerator(cfg, run_dir: Path):
    """The `accelerate.Accelerator` of this launch (trackers from `report_to`, logging under
    `run_dir`), after every launch-level check: trackers installed, FSDP2, no resume of a sharded
    run, prompts_per_step divisible by the process count, the engine fit for the launch."""
    from accelerate import Accelerator

    from .sharded import check_engine_matches_launch, is_sharded

    for tracker, modules in {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}.items():
        if tracker in cfg.report_to and not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigError(f"report_to: {tracker} is not installed (pip install {tracker})")
    try:
        accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=cfg.report_to or None, project_dir=str(run_dir))
    except ImportError as e:  # e.g. a DeepSpeed config without deepspeed installed
        raise UserError(f"accelerate: {e}") from None
    check_engine_matches_launch(accelerator)
    fsdp = getattr(accelerator.state, "fsdp_plugin", None)
    if fsdp is not None and getattr(fsdp, "fsdp_version", 2) != 2:
        raise ConfigError("fsdp_config.fsdp_version: use 2 (FSDP2); generation needs its unshard()")
    if is_sharded(accelerator) and cfg.resume is not False:
        raise ConfigError("resume: FSDP/DeepSpeed checkpoints hold weights only (sharded optimizer state is not saved); "
                          "start a new run with model.name=<checkpoint dir>, or train with DDP")
    if cfg.prompts_per_step % accelerator.num_processes:
        raise ConfigError(f"prompts_per_step: {cfg.prompts_per_step} prompts cannot be split over {accelerator.num_processes} "
                          "processes; use a multiple of the process count")
    return accelerator


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested config dict as {"a.b": scalar}, what the trackers' `init_trackers` accept."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
