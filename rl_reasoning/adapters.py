"""LoRA adapters through peft: wrap the policy, reference it without a second copy, merge on export.

- `lora.r > 0` wraps the policy with `peft.get_peft_model`; only adapter weights train (the
  optimizer sees only parameters that require grad).
- The KL reference is the same model with its adapters disabled (`disable_adapter()`), not a
  deep copy: LoRA + KL costs no extra weights in memory.
- Checkpoints hold the adapter (`adapter_model.safetensors`, `adapter_config.json`) plus the
  base model's name in `trainer_state.json`; `models.load_model` merges the adapter into the
  base weights on the fly when handed an adapter checkpoint, and `rl-reasoning export CKPT -o
  DIR` (`models.export_checkpoint`) writes that merged model as a plain HF checkpoint.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .config import LoraConfig
from .errors import UserError

ADAPTER_CONFIG = "adapter_config.json"


def apply_lora(model, cfg: LoraConfig):
    """The policy wrapped with fresh LoRA adapters (a peft.PeftModel)."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:  # pragma: no cover - peft is a dependency
        raise UserError("lora: needs peft (pip install peft)") from None
    targets = "all-linear" if list(cfg.target_modules) == ["all-linear"] else list(cfg.target_modules)
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:  # e.g. a target module that the model does not have
        raise UserError(f"lora.target_modules: {e}") from None


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def reference_context(model):
    """Context in which `model` computes the reference policy: adapters off for a PeftModel."""
    return model.disable_adapter() if is_peft(model) else contextlib.nullcontext()


def is_adapter_checkpoint(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base_model(path: str | Path) -> str:
    """The base model an adapter checkpoint was trained on: our trainer_state.json first (a
    built-in name survives a move to another machine), else peft's own record."""
    path = Path(path)
    state = path / "trainer_state.json"
    if state.is_file():
        base = json.loads(state.read_text()).get("base_model")
        if base:
            return base
    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{path}: adapter checkpoint does not name its base model")
    return base


def merge_adapter(base_model, adapter_dir: str | Path):
    """Base model + adapter -> a plain transformers model with the adapter folded in."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
