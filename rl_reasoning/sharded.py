"""What the GRPO loop needs from accelerate's engines beyond DDP: FSDP and DeepSpeed ZeRO.

- Generation: a rollout runs a different number of decode steps on each process, so a forward
  that all-gathers sharded parameters per call would deadlock. For generation the full
  parameters are gathered once: ZeRO-3 through TRL's `unwrap_model_for_generation`
  (DeepSpeed's GatheredParameters), FSDP2 through `unshard()` with resharding after forward
  switched off until the rollout is done. DDP and ZeRO-1/2 hold full parameters already.
- Gradient accumulation: the loop marks the accumulation boundary itself (the last micro-batch
  of a generation batch): `no_sync` for DDP/FSDP, accelerate's sync flag for DeepSpeed, whose
  config is given micro-batch size, accumulation 1 and our clipping norm.
- Checkpoints: full weights gathered with `accelerator.get_state_dict` (collective). The
  optimizer state of FSDP/ZeRO is sharded, so their checkpoints are weights-only and resume
  refuses them with a clear error.
Verified with DDP (gloo on CPU) in CI; the FSDP and DeepSpeed paths need GPUs and were not
exercised in this repository's CI.
"""

from __future__ import annotations

import contextlib

from accelerate.utils import DistributedType


def check_engine_matches_launch(accelerator) -> None:
    """accelerate quietly falls back to plain DDP (or to N independent processes) when an FSDP
    or DeepSpeed config is launched without GPUs; refuse that instead of training differently."""
    import os

    from .errors import ConfigError

    for engine, kind in (("FSDP", DistributedType.FSDP), ("DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(f"ACCELERATE_USE_{engine}", "").lower() == "true" and accelerator.distributed_type != kind:
            raise ConfigError(
                f"the accelerate config asks for {engine.title()} but accelerate set up {accelerator.distributed_type.value} "
                "(FSDP and DeepSpeed need GPUs); on CPU use recipes/accelerate_configs/ddp_cpu.yaml"
            )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigError(f"{launched} processes were launched but accelerate set up {accelerator.num_processes}")


def is_sharded(accelerator) -> bool:
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def configure_deepspeed(accelerator, micro_batch_size: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config fields that depend on the recipe, before `prepare`."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro_batch_size
    ds["gradient_accumulation_steps"] = 1  # the loop marks the boundary (see accumulation_boundary)
    ds["train_batch_size"] = micro_batch_size * accelerator.num_processes
    if max_grad_norm > 0:
        ds["gradient_clipping"] = max_grad_norm


@contextlib.contextmanager
def accumulation_boundary(accelerator, model, last: bool):
    """Around one micro-batch's backward: gradients are reduced (and DeepSpeed steps) only on the last."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.gradient_state._set_sync_gradients(last)
        try:
            yield
        finally:
            accelerator.gradient_state._set_sync_gradients(True)
    elif last or accelerator.num_processes == 1:
        yield
    else:
        with accelerator.no_sync(model):
            yield


@contextlib.contextmanager
def full_parameters_for_generation(accelerator, model):
    """Yield a module whose forward needs no collectives (see the module docstring)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(model, accelerator) as unwrapped:
            yield unwrapped
        return
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type == DistributedType.FSDP and hasattr(unwrapped, "unshard"):  # FSDP2
        unwrapped.set_reshard_after_forward(False)
        unwrapped.unshard()
        try:
            yield unwrapped
        finally:
            unwrapped.reshard()
            unwrapped.set_reshard_after_forward(True)
        return
    yield unwrapped


def gathered_state_dict(accelerator, model) -> dict | None:
    """Full weights for saving under FSDP/ZeRO (call on every process); None otherwise."""
    if not is_sharded(accelerator):
        return None
    return accelerator.get_state_dict(model)
