"""Faster decoding on CPU: linear layers run on weights pre-packed into oneDNN's blocked layout.

Decoding multiplies a few rows by every weight matrix once per token. With the plain layout
PyTorch's fp32 GEMM re-packs each weight on every call; for SmolLM2-135M's 49152-wide LM head
that made one 16-row product ~40 ms on 2 AVX2 cores, against ~18 ms pre-packed (the layers
gain ~25 %). For one rollout the weights are fixed, so we pack them once (~0.3-0.5 s for 135M
parameters) and route every `nn.Linear` through `mkldnn._linear_pointwise` until the rollout
ends. Results equal the plain path up to float rounding (tested); training never sees packed
weights. Inductor's CPU "freezing" does the same packing, but needs a recompile per update.
"""

from __future__ import annotations

import contextlib

import torch


def packing_available(model) -> bool:
    """fp32 weights on the CPU, and a PyTorch built with oneDNN."""
    try:
        p = next(model.parameters())
    except StopIteration:
        return False
    return p.device.type == "cpu" and p.dtype == torch.float32 and torch.backends.mkldnn.is_available()


@contextlib.contextmanager
def packed_linear_weights(model, batch_hint: int = 16, enabled: bool = True):
    """Within the context every nn.Linear of `model` computes with a packed copy of its weight.
    `batch_hint`: the typical number of rows per call (the packing is tuned for it; any works)."""
    if not enabled or not packing_available(model):
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
