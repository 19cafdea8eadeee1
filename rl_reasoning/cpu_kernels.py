"""Faster decoding on CPU: pre-packed linear weights and grouped-query attention without copies.

1. Linear layers run on weights pre-packed into oneDNN's blocked layout.

Decoding multiplies a few rows by every weight matrix once per token. With the plain layout
PyTorch's fp32 GEMM re-packs each weight on every call; for SmolLM2-135M's 49152-wide LM head
that made one 16-row product ~40 ms on 2 AVX2 cores, against ~18 ms pre-packed (the layers
gain ~25 %). For one rollout the weights are fixed, so we pack them once (~0.3-0.5 s for 135M
parameters) and route every `nn.Linear` through `mkldnn._linear_pointwise` until the rollout
ends. The bf16 sampling copy (precision.py) is packed in bf16 where oneDNN has bf16
kernels. Results equal the plain path up to float rounding (tested); training never sees packed
weights. Inductor's CPU "freezing" does the same packing, but needs a recompile per update.

2. Grouped-query attention (SmolLM2: 9 query heads share 3 key/value heads). transformers'
SDPA path copies every key/value head `groups` times (`repeat_kv`) whenever a mask is passed —
the whole KV cache, every layer, every token — because CUDA's kernels need that. PyTorch's CPU
kernel takes the shared heads directly (`enable_gqa=True`); it is ~2.4x faster at decode
shapes and gives the same numbers. `gqa_attention(model)` swaps it in for the rollout only.
"""

from __future__ import annotations

import contextlib

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

GQA_SDPA = "rl_reasoning_sdpa_gqa"


def packing_available(model) -> bool:
    """Weights on the CPU and a PyTorch built with oneDNN; fp32 weights, or bf16 weights (the
    bf16 sampling copy, precision.py) where oneDNN has bf16 linear kernels (it needs AVX-512
    BW/VL/DQ or AVX-NE-CONVERT, and is fast with AVX512-BF16 or AMX; AVX2-only CPUs have none,
    and bf16 decodes unpacked there). Whether bf16 is used at all is precision.py's measurement."""
    try:
        p = next(model.parameters())
    except StopIteration:
        return False
    if p.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return p.dtype == torch.float32 or (p.dtype == torch.bfloat16 and bf16_packing_supported())


def bf16_packing_supported() -> bool:
    """oneDNN's bf16 linear kernels run on this CPU."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def packed_linear_weights(model, batch_hint: int = 16, enabled: bool = True):
    """Within the context every nn.Linear of `model` computes with a packed copy of its weight.
    `batch_hint`: the typical number of rows per call (the packing is tuned for it; any works)."""
    if not enabled or not packing_available(model) or torch.is_autocast_enabled("cpu"):  # autocast casts per call: not packed
        yield model
        return
    patched = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), max(1, batch_hint))
                    bias = None if module.bias is None else module.bias.detach()
                    module.forward = _packed_forward(packed, bias)
                    patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward


def _sdpa_gqa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function contract: query (B, H, q, D), key/value (B, Hkv, T, D)
    -> ((B, q, H, D), None), with the key/value heads shared inside the kernel."""
    q_length = query.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = q_length > 1 and attention_mask is None and is_causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )  # (B, H, q, D)
    return out.transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS.register(GQA_SDPA, _sdpa_gqa_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(GQA_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


@contextlib.contextmanager
def gqa_attention(model, enabled: bool = True):
    """Within the context a CPU model using transformers' "sdpa" attention uses `_sdpa_gqa_forward`."""
    config = getattr(model, "config", None)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not enabled or not on_cpu or config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield model
        return
    config._attn_implementation = GQA_SDPA
    try:
        yield model
    finally:
        config._attn_implementation = "sdpa"
