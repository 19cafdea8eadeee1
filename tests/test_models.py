"""Model resolution and loading; the embedded model test is slow (real weights)."""

from __future__ import annotations

import time

import pytest
import torch

from rl_reasoning.errors import UserError
from rl_reasoning.models import load_model, pick_dtype, resolve_model_dir


def test_local_checkpoint_dir_loads_in_fp32(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.source == str(tiny_model_dir)
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer.pad_token_id is not None


def test_bad_model_names(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="GGUF file not found"):
        resolve_model_dir(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_dir(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_dir("smollm-typo")
    assert resolve_model_dir("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"  # Hub id, not fetched here


def test_master_weights_are_float32_everywhere():
    # the master weights are float32 on every device (issue #33: bf16 masters lose small updates)
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.float32
    for half in ("bfloat16", "float16"):
        with pytest.raises(UserError, match=f"model.dtype: {half} weights are refused.*compute_dtype"):
            pick_dtype(half, torch.device("cuda"))


@pytest.mark.slow
def test_embedded_model_is_cached_and_reloads_fast():
    resolve_model_dir("smollm2-135m-instruct")  # converts once if needed
    start = time.perf_counter()
    loaded = load_model("smollm2-135m-instruct")
    seconds = time.perf_counter() - start
    assert loaded.model.config.model_type == "llama" and loaded.model.num_parameters() > 100e6
    assert not getattr(loaded.model, "is_quantized", False) and "quantization_config" not in loaded.model.config.to_dict()
    ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, return_dict=False)
    assert loaded.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    print(f"embedded model load from cache: {seconds:.1f} s")  # reported in the README, not asserted
