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

import torch
from transformers import DynamicCache

from .config import RolloutConfig
from .cpu_kernels import gqa_attention, packed_linear_weights
from .engine import RolloutBatch, cut_at_stop, finished_batch, left_pad, positions_from_mask
from .kv_cache import PreallocatedCache
from .sampling import sample_tokens
from .static_decode import SDPA_IMPLEMENTATIONS, CudaGraphBackend, StaticDecoder, prompt_width, weights_key


class RolloutEngine:
    """Samples completions from a causal LM (a `GenerationEngine`); stateless apart from the model it wraps."""

    compact_fraction = 0.25  # compact the batch once this share of its rows has finished
    preallocated_cache = True  # in-place KV appends (kv_cache.py); False = transformers' DynamicCache
    cpu_gqa_attention = True  # shared KV heads inside SDPA on CPU (cpu_kernels.py)
    max_decoders = 4  # static decode: decoders (buffers, and a CUDA graph each) kept for reuse

    def __init__(self, model, tokenizer, eos_token_ids: list[int], pad_token_id: int):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
        self.pad_token_id = pad_token_id
        self._decoders: dict[tuple, StaticDecoder] = {}  # static decode: one per shape and weights, least recently used first

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        params: RolloutConfig,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> RolloutBatch:
        """`shard` = (offset, total): these N rows are rows offset..offset+N-1 of a batch of `total`
        completions generated across processes (default: the whole batch, (0, N))."""
        N = len(prompts) * params.num_generations
        offset, total = shard or (0, N)
        if offset < 0 or offset + N > total:
            raise ValueError(f"shard {shard} does not hold {N} rows")
        static = self.static_decode_on(params)
        with (
            packed_linear_weights(self.model, batch_hint=N, enabled=params.packed_weights),
            gqa_attention(self.model, enabled=self.cpu_gqa_attention),
        ):
            if static:
                return self._generate_static(prompts, params, generator, offset, total)
            return self._generate(prompts, params, generator, offset, total)

    def static_decode_on(self, params: RolloutConfig) -> bool:
        """`rollout.static_decode` resolved for this model: auto = on with CUDA and SDPA attention."""
        sdpa = getattr(self.model.config, "_attn_implementation", None) in SDPA_IMPLEMENTATIONS
        cuda = self.device.type == "cuda"
        if params.cuda_graphs is True and not cuda:
            raise ValueError(f"rollout.cuda_graphs: true needs a CUDA device; the model is on {self.device.type}")
        if params.static_decode == "auto":
            return cuda and sdpa
        if params.static_decode and not sdpa:
            raise ValueError("rollout.static_decode: needs SDPA attention (a boolean 4-D mask); the model uses "
                             f"{self.model.config._attn_implementation!r}")
        return bool(params.static_decode)

    def _generate_static(self, prompts, params, generator, offset: int, total: int) -> RolloutBatch:
        """The fixed-buffer decode (static_decode.py), with a decoder kept per shape and weights."""
        N = len(prompts) * params.num_generations
        width = prompt_width(max(len(p) for p in prompts), params.prompt_bucket)
        graphed = self.device.type == "cuda" and params.cuda_graphs is not False
        key = (N, width, params.max_new_tokens, params.temperature, params.top_p, graphed, weights_key(self.model))
        decoder = self._decoders.pop(key, None)
        if decoder is None:
            backend = CudaGraphBackend(self.device) if graphed else None
            decoder = StaticDecoder(self.model, self.tokenizer, self.eos_token_ids, self.pad_token_id, N, width,
                                    params, graphed, backend)
        self._decoders[key] = decoder  # most recently used last
        while len(self._decoders) > self.max_decoders:
            self._decoders.pop(next(iter(self._decoders)))
        was_training = self.model.training
        self.model.eval()
        try:
            return decoder.generate(prompts, params, generator, offset, total, params.poll_every)
        finally:
            if was_training:
                self.model.train()

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
        return finished_batch(prompt_ids, prompt_mask, tokens_out, lengths, logp_out, ent_out, truncated, self.tokenizer,
                              params.stop, G, self.pad_token_id)

    def decode(self, ids: torch.Tensor, stop: list[str]) -> str:
        return cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), stop)
