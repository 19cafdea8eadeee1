"""The rollout engine: sample G completions per prompt with a KV cache.

How it works (and where it departs from `model.generate`):
- Shared-prefix prefill: each prompt is run through the model once; its KV cache is then
  repeated G times (`batch_repeat_interleave`) instead of prefilling G copies.
- Finished rows leave the batch: once a quarter of the rows in the batch are done (EOS or a
  stop string), the cache, mask and positions are compacted to the rows still running.
- Stop strings are checked incrementally, on the decoded tail of each new token only.
- Log-probs: for every sampled token we record log softmax(logits / T) over the *full*
  vocabulary, which is exactly what the GRPO loss recomputes with gradients; top-p only
  changes which token is drawn. Greedy decoding (T = 0) records log-probs at T = 1.
- Determinism: all randomness comes from the `torch.Generator` passed in. Every decode step
  draws one uniform per row of the *global* batch (`shard`), so a process that generates rows
  [offset, offset + N) of a batch sharded over several processes draws exactly the numbers a
  single process generating the whole batch would use for those rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .config import RolloutConfig
from .cpu_kernels import gqa_attention, packed_linear_weights
from .kv_cache import PreallocatedCache


# The engine reads the recipe's `rollout` section directly (num_generations, max_new_tokens,
# temperature, top_p, stop): one definition of the sampling knobs.
SamplingParams = RolloutConfig


@dataclass
class RolloutBatch:
    """N = P * G completions; row i belongs to prompt i // G."""

    prompt_ids: torch.Tensor  # (N, Lp) left-padded with pad_id
    prompt_mask: torch.Tensor  # (N, Lp) 1 = real prompt token
    completion_ids: torch.Tensor  # (N, Lc) right-padded with pad_id
    completion_mask: torch.Tensor  # (N, Lc) 1 = sampled token (EOS / stop token included)
    logprobs: torch.Tensor  # (N, Lc) sampling log-probs log softmax(logits/T)[token]; 0 at padding
    entropies: torch.Tensor  # (N, Lc) entropy of softmax(logits/T) at each sampled position; 0 at padding
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens without EOS or stop string
    texts: list[str]  # decoded completions, special tokens removed, cut after the stop string
    group_size: int
    sampler_logprobs: torch.Tensor | None = None  # (N, Lc) another engine's (vLLM) log-probs when `logprobs` were recomputed

    @property
    def lengths(self) -> torch.Tensor:  # (N,)
        return self.completion_mask.sum(-1)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and mask, padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore padding: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one token per row with the given uniforms (n,) in [0, 1) (unused when greedy).
    Returns (tokens (n,), logprobs (n,), entropies (n,))."""
    logits = logits.float()  # (n, V)
    scaled = logits / temperature if temperature > 0 else logits
    logp = torch.log_softmax(scaled, dim=-1)  # (n, V)
    entropy = -(logp.exp() * logp).sum(-1)  # (n,)
    if temperature == 0:
        tokens = logits.argmax(-1)
    else:
        probs = logp.exp()
        if top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            cumulative = sorted_probs.cumsum(-1)
            drop = cumulative - sorted_probs > top_p  # keep the smallest prefix reaching top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        tokens = inverse_cdf_sample(probs, uniforms)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1), entropy


def inverse_cdf_sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One draw per row from (unnormalised) probs (n, V) and uniforms (n,): the first index whose
    float64 cumulative sum exceeds u * total. Exact in law, never picks a zero-probability token,
    and ~15x cheaper on CPU than torch.multinomial, which draws V exponentials per row."""
    cdf = probs.double().cumsum(-1)  # (n, V)
    u = uniforms.to(cdf)[:, None] * cdf[:, -1:]  # (n, 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)  # (n,)


class RolloutEngine:
    """Samples completions from a causal LM; stateless apart from the model it wraps."""

    compact_fraction = 0.25  # compact the batch once this share of its rows has finished
    preallocated_cache = True  # in-place KV appends (kv_cache.py); False = transformers' DynamicCache
    cpu_gqa_attention = True  # shared KV heads inside SDPA on CPU (cpu_kernels.py)

    def __init__(self, model, tokenizer, eos_token_ids: list[int], pad_token_id: int):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
        self.pad_token_id = pad_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> RolloutBatch:
        """`shard` = (offset, total): these N rows are rows offset..offset+N-1 of a batch of `total`
        completions generated across processes (default: the whole batch, (0, N))."""
        N = len(prompts) * params.num_generations
        offset, total = shard or (0, N)
        if offset < 0 or offset + N > total:
            raise ValueError(f"shard {shard} does not hold {N} rows")
        with (
            packed_linear_weights(self.model, batch_hint=N, enabled=getattr(params, "packed_weights", True)),
            gqa_attention(self.model, enabled=self.cpu_gqa_attention),
        ):
            return self._generate(prompts, params, generator, offset, total)

    def _generate(self, prompts, params, generator, offset: int, total: int) -> RolloutBatch:
        G, T_max = params.num_generations, params.max_new_tokens
        P = len(prompts)
        N = P * G
        device = self.device
        was_training = self.model.training
        self.model.eval()

        prompt_ids, prompt_mask = left_pad(prompts, self.pad_token_id)  # (P, Lp)
        ids_d, mask_d = prompt_ids.to(device), prompt_mask.to(device)
        cache = PreallocatedCache(room=T_max) if self.preallocated_cache else DynamicCache()
        out = self.model(
            input_ids=ids_d,
            attention_mask=mask_d,
            position_ids=positions_from_mask(mask_d),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        if G > 1:
            cache.batch_repeat_interleave(G)
        logits = out.logits[:, -1].repeat_interleave(G, dim=0)  # (N, V)
        attn = mask_d.repeat_interleave(G, dim=0)  # (n, L) for the rows in the batch
        next_pos = attn.sum(-1)  # (n,) position id of the next token

        tokens_out = torch.full((N, T_max), self.pad_token_id, dtype=torch.long)
        logp_out = torch.zeros((N, T_max))
        ent_out = torch.zeros((N, T_max))
        lengths = torch.zeros(N, dtype=torch.long)
        truncated = torch.zeros(N, dtype=torch.bool)
        rows = torch.arange(N)  # batch row -> completion index
        running = torch.ones(N, dtype=torch.bool)  # per batch row: still generating
        eos = self.eos_token_ids.to(device)
        stop_window = max((len(s) for s in params.stop), default=0) + 2

        for t in range(T_max):
            uniforms = None
            if params.temperature > 0:  # (total,) drawn for the global batch, read at this batch's rows
                uniforms = torch.rand(total, generator=generator, device=device, dtype=torch.float64)[(rows + offset).to(device)]
            tok, lp, ent = sample_tokens(logits, params.temperature, params.top_p, uniforms)
            tok_c, lp_c, ent_c = tok.cpu(), lp.cpu(), ent.cpu()
            live = rows[running]
            tokens_out[live, t] = tok_c[running]
            logp_out[live, t] = lp_c[running]
            ent_out[live, t] = ent_c[running]
            lengths[live] += 1

            done = running & torch.isin(tok, eos).cpu()
            if params.stop:
                for b in torch.nonzero(running & ~done).flatten().tolist():
                    i = rows[b].item()
                    tail = self.tokenizer.decode(tokens_out[i, max(0, t + 1 - stop_window) : t + 1])
                    if any(s in tail for s in params.stop):
                        done[b] = True
            running &= ~done
            if t == T_max - 1:
                truncated[rows[running]] = True
                break
            if not running.any():
                break
            finished_in_batch = int((~running).sum())
            if finished_in_batch >= max(1, int(self.compact_fraction * len(rows))):
                keep = torch.nonzero(running).flatten()
                cache.batch_select_indices(keep.to(device))
                rows, running = rows[keep], running[keep]
                attn, next_pos, tok = attn[keep.to(device)], next_pos[keep.to(device)], tok[keep.to(device)]
            attn = torch.cat([attn, attn.new_ones((len(rows), 1))], dim=1)
            out = self.model(
                input_ids=tok[:, None],
                attention_mask=attn,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            logits = out.logits[:, -1]
            next_pos = next_pos + 1

        if was_training:
            self.model.train()
        width = max(int(lengths.max()), 1)
        completion_ids = tokens_out[:, :width]
        completion_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(G, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(G, dim=0),
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            logprobs=logp_out[:, :width] * completion_mask,
            entropies=ent_out[:, :width] * completion_mask,
            truncated=truncated,
            texts=[self.decode(completion_ids[i, : lengths[i]], params.stop) for i in range(N)],
            group_size=G,
        )

    def decode(self, ids: torch.Tensor, stop: list[str]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((text.find(s) + len(s) for s in stop if s in text), default=None)
        return text[:cut] if cut is not None else text


def _teacher_forced(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, **model_kwargs):
    """One forward over prompt + completion: (scaled logits (B, Lc, V), model outputs, attention mask (B, Lp + Lc)).
    Only the Lc + 1 last positions go through the LM head."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, Lp + Lc)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (B, Lp + Lc)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        logits_to_keep=completion_ids.shape[1] + 1,
        use_cache=False,
        **model_kwargs,
    )
    logits = _scaled_(out.logits[:, :-1].float(), temperature)  # (B, Lc, V): position j predicts completion token j
    return logits, out, attention_mask


def completion_logprobs(
    model,
    prompt_ids: torch.Tensor,  # (B, Lp) left-padded
    prompt_mask: torch.Tensor,  # (B, Lp)
    completion_ids: torch.Tensor,  # (B, Lc) right-padded
    completion_mask: torch.Tensor,  # (B, Lc)
    temperature: float,
    output_router_logits: bool = False,
):
    """Teacher-forced log p(completion token) under softmax(logits / T): (B, Lc).

    The log-softmax is taken as logit - logsumexp, so the (B, Lc, V) log-prob tensor is never
    materialised twice. With `output_router_logits` (MoE policies) returns (log-probs, model
    outputs, attention mask).
    """
    logits, out, attention_mask = _teacher_forced(
        model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
        **({"output_router_logits": True} if output_router_logits else {}),
    )
    logp = _picked_logprobs(logits, completion_ids)  # (B, Lc)
    return (logp, out, attention_mask) if output_router_logits else logp


@torch.no_grad()
def completion_logprobs_and_entropy(
    model,
    prompt_ids: torch.Tensor,  # (B, Lp) left-padded
    prompt_mask: torch.Tensor,  # (B, Lp)
    completion_ids: torch.Tensor,  # (B, Lc) right-padded
    completion_mask: torch.Tensor,  # (B, Lc)
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """No-grad log-probs (B, Lc) and entropies (B, Lc) of softmax(logits / T): what the trainer
    recomputes for completions sampled by another engine (vLLM)."""
    logits = _teacher_forced(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)[0]
    logp_all = torch.log_softmax(logits, dim=-1)  # (B, Lc, V)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, Lc)
    return logp_all.gather(-1, completion_ids[..., None]).squeeze(-1), entropy


def grouped_completion_logprobs(
    model,
    prompt_ids: torch.Tensor,  # (Lp,) one prompt, no padding
    completion_ids: torch.Tensor,  # (b, Lc) completions of that prompt, right-padded
    completion_mask: torch.Tensor,  # (b, Lc)
    temperature: float,
) -> torch.Tensor:
    """`completion_logprobs` for b completions sharing one prompt, with the prompt run once.

    The prompt's keys/values (with gradients) are repeated b times and the completions attend to
    them, so the prompt costs one forward/backward per group instead of b (verl's "prefix
    grouping"). Autograd sums the b gradients flowing into the shared prompt activations, which
    is exactly the plain path's sum over b identical prompt copies: the loss and gradients are
    equal up to float rounding (tested).
    """
    b, Lc = completion_ids.shape
    Lp = prompt_ids.shape[0]
    prompt_out = model(input_ids=prompt_ids[None], past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
    cache = prompt_out.past_key_values
    if b > 1:
        cache.batch_repeat_interleave(b)
    first = torch.log_softmax(_scaled_(prompt_out.logits[:, -1:].float(), temperature), dim=-1)  # (1, 1, V): predicts completion token 0
    logp = first.expand(b, 1, -1).gather(-1, completion_ids[:, :1, None]).squeeze(-1)  # (b, 1)
    if Lc > 1:
        attention_mask = torch.cat([completion_mask.new_ones((b, Lp)), completion_mask[:, :-1]], dim=1)  # (b, Lp + Lc - 1)
        rest = model(
            input_ids=completion_ids[:, :-1],
            attention_mask=attention_mask,
            position_ids=torch.arange(Lp, Lp + Lc - 1, device=completion_ids.device).expand(b, -1),
            past_key_values=cache,
            use_cache=True,
        ).logits.float()  # (b, Lc - 1, V): position j predicts completion token j + 1
        logp = torch.cat([logp, _picked_logprobs(_scaled_(rest, temperature), completion_ids[:, 1:])], dim=1)  # (b, Lc)
    return logp


def _scaled_(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T, in place: `logits` is a fresh LM-head output that autograd does not save
    (a matmul's backward needs its inputs, not its output), so no (B, L, V) copy is made."""
    return logits.div_(temperature) if temperature > 0 else logits


def _picked_logprobs(scaled_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(scaled_logits)[token] for (B, L, V) logits already divided by T and tokens
    (B, L), as logit - logsumexp so no second (B, L, V) tensor is materialised: (B, L)."""
    return scaled_logits.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(scaled_logits, dim=-1)
