"""Mixture-of-Experts policies: router load-balancing loss and per-expert load.

Any transformers MoE causal LM that returns router logits and an `aux_loss` when called with
`output_router_logits=True` works (Mixtral, Qwen2-MoE, Qwen3-MoE, ...). transformers adds the
auxiliary loss only when `labels` are passed, which GRPO never does, so the trainer adds
`coef * aux_loss` itself, once per micro-batch (averaged over micro-batches). The auxiliary
loss is Switch Transformer's: E * sum_e f_e * P_e (f_e the fraction of routed token slots,
P_e the mean router probability), 1.0 when perfectly balanced, E when collapsed to one expert.
Departure: the load metric counts completion *and* prompt tokens, as the loss does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MoESpec:
    num_experts: int
    top_k: int
    aux_loss_coef: float


def moe_spec(model, coef_override: float | None) -> MoESpec | None:
    """The router settings of an MoE model, or None for a dense one."""
    cfg = getattr(model, "config", None)
    experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    top_k = getattr(cfg, "num_experts_per_tok", None)
    if not experts or not top_k:
        return None
    coef = coef_override if coef_override is not None else float(getattr(cfg, "router_aux_loss_coef", 0.0) or 0.0)
    return MoESpec(int(experts), int(top_k), coef)


def expert_load(router_logits: tuple[torch.Tensor, ...], attention_mask: torch.Tensor, top_k: int) -> torch.Tensor:
    """Share of routed (token, slot) pairs that each expert receives, averaged over layers: (E,).

    router_logits: one (b * L, E) tensor per MoE layer; attention_mask: (b, L), 1 = real token.
    """
    keep = attention_mask.reshape(-1).bool()  # (b*L,)
    loads = []
    for logits in router_logits:
        chosen = logits.detach()[keep].topk(top_k, dim=-1).indices  # (tokens, k)
        counts = torch.bincount(chosen.reshape(-1), minlength=logits.shape[-1]).float()  # (E,)
        loads.append(counts / counts.sum().clamp(min=1))
    return torch.stack(loads).mean(0)  # (E,)


def load_metrics(load: torch.Tensor, aux_loss: float) -> dict[str, float]:
    """moe/* metrics from a mean per-expert load (E,)."""
    E = load.numel()
    out = {"moe/aux_loss": aux_loss, "moe/load_max_over_mean": float(load.max() * E)}
    out.update({f"moe/expert_load/{e}": float(load[e]) for e in range(E)})
    return out
