"""Decode over fixed-shape buffers: one step callable that a CUDA graph can capture and replay.

`rollout.RolloutEngine` decodes with Python-side bookkeeping: it reads every sampled token back to
the host, decodes each row's tail for stop strings, and compacts finished rows out of the batch.
On a CPU those costs hide behind the matmuls; on a GPU a 135M model's step is a few hundred tiny
kernels and each host read stalls the stream (docs/performance.md, "CUDA"). This module keeps the
whole decode state in tensors allocated once per shape:

- `DecodeState`: next tokens, positions, a device step counter, a 4-D attention mask at full
  length, the K/V cache (transformers' `StaticLayer`: `index_copy_` at a device counter),
  pre-drawn uniforms, output tokens / log-probs / entropies, lengths and running flags.
- `decode_step(state)`: sample from the current logits (`sampling.sample_tokens`, the uniforms of
  row `step`), write column `step` of the outputs, finish rows on EOS, run the model on the new
  tokens and keep the next logits. It only mutates those buffers: no host read, no Python-int
  state, the same ops on the same shapes every step (tests/test_static_decode.py checks all
  three with a dispatch-mode trace).
- `GraphRunner`: calls the step directly (CPU, or graphs off), or captures it once into a CUDA
  graph after a warm-up and replays it; any failure falls back to the direct call with one warning.
- `StaticDecoder.generate`: the host loop. It polls every `rollout.poll_every` steps (one small
  device-to-host copy: running flags, lengths and, with stop strings, the new tokens), ends rows
  whose text reached a stop string with the exact rule the dynamic engine applies after every
  token (a lagged check, then a cut at the first token that completed it), and stops early when
  no row runs. The results cross to the host once, at the end.

Departures from the dynamic engine, none of which changes what is sampled: rows are never
compacted (finished rows keep computing and write padding); attention runs over the full
prompt-bucket + max_new_tokens width under the mask; prompts are left-padded to a multiple of
`prompt_bucket` so a captured graph serves many batches; a row may run up to `poll_every - 1`
steps past its stop string before the host cuts it. Given the same uniforms it returns the same
tokens, log-probs, entropies, lengths and truncation flags, and leaves the generator where the
dynamic engine leaves it (tested).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import torch
from transformers import DynamicCache, StaticCache

from .engine import RolloutBatch, finished_batch, left_pad, positions_from_mask
from .sampling import sample_tokens

SDPA_IMPLEMENTATIONS = ("sdpa", "rl_reasoning_sdpa_gqa")  # those that take a boolean 4-D mask as given


@dataclass
class DecodeState:
    """Every tensor the step reads or writes, allocated once per decoder (N rows, L = prompt
    bucket + T_max columns). `reset` refills them in place, so their addresses never change."""

    next_tokens: torch.Tensor  # (N, 1) long: the token the next forward reads
    positions: torch.Tensor  # (N, 1) long: its position id
    step: torch.Tensor  # (1,) long: t, the output column the next step writes
    column: torch.Tensor  # (1,) long: the cache column the next forward writes (prompt width + t)
    mask: torch.Tensor  # (N, 1, 1, L) bool: True = attend (prompt tokens, and every decode column written)
    logits: torch.Tensor  # (N, V) the logits the next step samples from
    uniforms: torch.Tensor  # (T_max, N) float64: row t is step t's draw per row
    tokens: torch.Tensor  # (N, T_max) long: sampled tokens, pad after a row ends
    logprobs: torch.Tensor  # (N, T_max) float32: 0 after a row ends
    entropies: torch.Tensor  # (N, T_max) float32: 0 after a row ends
    lengths: torch.Tensor  # (N,) long: tokens sampled while running (the EOS included)
    running: torch.Tensor  # (N,) bool
    eos: torch.Tensor  # (E,) long: EOS / stop-token ids

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]


def decode_step(model, cache: StaticCache, state: DecodeState, temperature: float, top_p: float, pad_id: int) -> None:
    """One decode step in place: sample at column `step`, then one forward on the sampled tokens."""
    s = state
    uniforms = s.uniforms.index_select(0, s.step).squeeze(0) if temperature > 0 else None  # (N,)
    tok, logp, entropy = sample_tokens(s.logits, temperature, top_p, uniforms)  # (N,) each
    run = s.running  # (N,) bool, before this token
    col = s.step  # (1,)
    s.tokens.index_copy_(1, col, torch.where(run, tok, pad_id)[:, None])
    s.logprobs.index_copy_(1, col, torch.where(run, logp, 0.0)[:, None])
    s.entropies.index_copy_(1, col, torch.where(run, entropy, 0.0)[:, None])
    s.lengths.add_(run)
    s.running.logical_and_(~torch.isin(tok, s.eos))
    s.next_tokens.copy_(tok[:, None])
    s.mask.index_fill_(3, s.column, True)
    out = model(input_ids=s.next_tokens, attention_mask=s.mask, position_ids=s.positions,
                past_key_values=cache, use_cache=True)
    s.logits.copy_(out.logits[:, -1])
    s.positions.add_(1)
    s.column.add_(1)
    s.step.add_(1)


class CudaGraphBackend:
    """What `GraphRunner` needs from CUDA; tests substitute a fake (the CPU wheel's CUDAGraph is a stub)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()

    def warmup_context(self):
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        return torch.cuda.stream(stream)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def new_graph(self):
        return torch.cuda.CUDAGraph()

    def capture_context(self, graph):
        return torch.cuda.graph(graph, pool=self.pool)


class GraphRunner:
    """Runs `step()`; with `graphed`, captures it on the first call (after `warmup_steps` eager
    steps, whose effects on `state` are undone) and replays the graph from then on."""

    warmup_steps = 2

    def __init__(self, step, state: list[torch.Tensor], graphed: bool, backend=None):
        self.step, self.state = step, state
        self.graphed, self.backend = graphed, backend
        self.graph = None
        self.captures = 0

    def __call__(self) -> None:
        if self.graphed and self.graph is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step()

    def _restore(self, saved: list[torch.Tensor]) -> None:
        for tensor, copy in zip(self.state, saved):
            tensor.copy_(copy)

    def _capture(self) -> None:
        saved = [t.clone() for t in self.state]
        b = self.backend
        try:
            with b.warmup_context():
                for _ in range(self.warmup_steps):
                    self.step()
            b.synchronize()
            self._restore(saved)  # the warm-up ran for real: put the state back
            graph = b.new_graph()
            with b.capture_context(graph):
                self.step()
            b.synchronize()
            self._restore(saved)  # a real capture runs nothing; a fake one may
            self.graph = graph
            self.captures += 1
        except Exception as error:  # noqa: BLE001 - any capture failure falls back to eager, once
            warnings.warn(f"CUDA graph capture failed ({type(error).__name__}: {error}); decoding without graphs", stacklevel=3)
            self.graphed, self.graph = False, None
            try:
                b.synchronize()
            except Exception:  # noqa: BLE001 - a broken capture can leave the device in error
                pass
            self._restore(saved)


def prompt_width(longest: int, bucket: int) -> int:
    """Prompt columns of a decoder: the longest prompt rounded up to a multiple of `bucket`."""
    return -(-max(longest, 1) // bucket) * bucket


def weights_key(model) -> tuple:
    """Addresses, shapes and dtypes of the model's tensors: a captured graph reads them, so a
    decoder is reused only while they hold (in-place updates keep them; reloading does not)."""
    return tuple((t.data_ptr(), tuple(t.shape), t.dtype) for t in [*model.parameters(), *model.buffers()])


class StaticDecoder:
    """Decoder state for one shape (N rows, prompt width Lp, T_max, sampling settings) and its runner."""

    def __init__(self, model, tokenizer, eos_ids: torch.Tensor, pad_id: int, N: int, prompt_cols: int,
                 params, graphed: bool, backend=None):
        device = next(model.parameters()).device
        self.model, self.tokenizer, self.pad_id = model, tokenizer, pad_id
        self.N, self.Lp, self.T = N, prompt_cols, params.max_new_tokens
        self.temperature, self.top_p = params.temperature, params.top_p
        L = prompt_cols + self.T
        V = model.get_output_embeddings().weight.shape[0]
        self.cache = StaticCache(config=model.config, max_cache_len=L)
        long = dict(dtype=torch.long, device=device)
        self.state = DecodeState(
            next_tokens=torch.zeros((N, 1), **long), positions=torch.zeros((N, 1), **long),
            step=torch.zeros(1, **long), column=torch.zeros(1, **long),
            mask=torch.zeros((N, 1, 1, L), dtype=torch.bool, device=device),
            logits=torch.zeros((N, V), dtype=torch.float32, device=device),
            uniforms=torch.zeros((self.T, N), dtype=torch.float64, device=device),
            tokens=torch.zeros((N, self.T), **long),
            logprobs=torch.zeros((N, self.T), device=device), entropies=torch.zeros((N, self.T), device=device),
            lengths=torch.zeros(N, **long), running=torch.zeros(N, dtype=torch.bool, device=device),
            eos=eos_ids.to(device),
        )
        self.device = device
        self.initialized = False
        self.runner = None
        self.graphed, self.backend = graphed, backend

    def _step(self) -> None:
        decode_step(self.model, self.cache, self.state, self.temperature, self.top_p, self.pad_id)

    def _runner_state(self) -> list[torch.Tensor]:
        """What a step mutates (the warm-up's effects are undone on these): the state and each cache
        layer's write counter (its K/V columns are rewritten by the real steps)."""
        return [*self.state.tensors(), *(layer.cumulative_length for layer in self.cache.layers)]

    def _prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, G: int) -> None:
        """Run the P prompts (P, Lp) once and copy their keys/values G times into the static cache."""
        s = self.state
        ids, mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                         past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
        for layer, source in zip(self.cache.layers, out.past_key_values.layers):
            keys = source.keys.repeat_interleave(G, dim=0)  # (N, H, Lp, D)
            values = source.values.repeat_interleave(G, dim=0)
            if not self.initialized:
                layer.lazy_initialization(keys, values)
            layer.keys[:, :, : self.Lp].copy_(keys)
            layer.values[:, :, : self.Lp].copy_(values)
            layer.keys[:, :, self.Lp :].zero_()
            layer.values[:, :, self.Lp :].zero_()
            layer.cumulative_length.fill_(self.Lp)
        self.initialized = True
        full = mask.repeat_interleave(G, dim=0)  # (N, Lp)
        s.mask.zero_()
        s.mask[:, 0, 0, : self.Lp].copy_(full.bool())
        s.positions.copy_(full.sum(-1, keepdim=True))
        s.logits.copy_(out.logits[:, -1].float().repeat_interleave(G, dim=0))
        s.step.zero_()
        s.column.fill_(self.Lp)
        s.tokens.fill_(self.pad_id)
        s.logprobs.zero_()
        s.entropies.zero_()
        s.lengths.zero_()
        s.running.fill_(True)

    def prepare(self, prompts: list[list[int]], params, generator, offset: int, total: int):
        """Prefill the prompts and draw the uniforms: the state of step 0, ready for `runner()`.
        Returns the prompts as the batch reports them (P, Lp') and the draw (None when greedy)."""
        G = params.num_generations
        assert len(prompts) * G == self.N, (len(prompts) * G, self.N)
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_id)  # (P, Lp')
        pad = self.Lp - prompt_ids.shape[1]
        wide_ids = torch.nn.functional.pad(prompt_ids, (pad, 0), value=self.pad_id)  # (P, Lp)
        wide_mask = torch.nn.functional.pad(prompt_mask, (pad, 0), value=0)
        self._prefill(wide_ids, wide_mask, G)
        draw = _Uniforms(generator, self.device, total, offset, self.N) if params.temperature > 0 else None
        if draw is not None:
            self.state.uniforms.copy_(draw.all_rows(self.T))
        if self.runner is None:
            self.runner = GraphRunner(self._step, self._runner_state(), self.graphed, self.backend)
        return prompt_ids, prompt_mask, draw

    def generate(self, prompts: list[list[int]], params, generator, offset: int, total: int,
                 poll_every: int) -> RolloutBatch:
        G, T, N = params.num_generations, self.T, self.N
        prompt_ids, prompt_mask, draw = self.prepare(prompts, params, generator, offset, total)
        s = self.state
        host_tokens = torch.full((N, T), self.pad_id, dtype=torch.long)
        cut = torch.full((N,), -1, dtype=torch.long)  # a stop string ended the row after `cut` tokens (-1: none)
        alive = torch.ones(N, dtype=torch.bool)  # the host's view: not finished by EOS or a stop string
        window = max((len(x) for x in params.stop), default=0) + 2
        t = 0
        while t < T:
            n = min(poll_every, T - t)
            for _ in range(n):
                self.runner()
            polled = torch.cat([s.tokens[:, t : t + n], s.running[:, None].long(), s.lengths[:, None]], dim=1).cpu()  # one sync
            host_tokens[:, t : t + n] = polled[:, :n]
            running, lengths = polled[:, n].bool(), polled[:, n + 1]
            if params.stop:
                stopped = self._stop_cuts(host_tokens, alive, running, lengths, t, t + n, params.stop, window)
                if stopped:
                    rows = torch.tensor(sorted(stopped), dtype=torch.long)
                    cut[rows] = torch.tensor([stopped[r] for r in sorted(stopped)], dtype=torch.long)
                    s.running.index_fill_(0, rows.to(self.device), False)
                    running[rows] = False
            alive &= running
            t += n
            if not alive.any():
                break

        # the results cross once: float64 holds the token ids and the fp32 log-probs exactly
        out = torch.cat([s.tokens.double(), s.lengths[:, None].double(), s.logprobs.double(), s.entropies.double()], dim=1).cpu()
        tokens, lengths = out[:, :T].long(), out[:, T].long()  # (N, T), (N,)
        logprobs, entropies = out[:, T + 1 : 2 * T + 1].float(), out[:, 2 * T + 1 :].float()  # (N, T) each
        lengths = torch.where(cut >= 0, torch.minimum(cut, lengths), lengths)  # (N,)
        truncated = alive & (lengths == T)
        used = T if bool(truncated.any()) else int(lengths.max())
        if draw is not None:
            draw.leave_generator_after(used)

        return finished_batch(prompt_ids, prompt_mask, tokens, lengths, logprobs, entropies, truncated, self.tokenizer,
                              params.stop, G, self.pad_id)

    def _stop_cuts(self, tokens: torch.Tensor, alive: torch.Tensor, running: torch.Tensor, lengths: torch.Tensor,
                   start: int, end: int, stop: list[str], window: int) -> dict[int, int]:
        """Rows whose text reached a stop string within steps [start, end), and how many tokens they
        keep: the dynamic engine's rule (after step t, decode the last `window` tokens and look for a
        stop string; EOS at step t comes first) applied to each step. One batched decode of each
        row's span rules out most rows; a row is checked step by step only when a stop string, or an
        incomplete UTF-8 character, shows in it."""
        rows = torch.nonzero(alive).flatten().tolist()
        if not rows:
            return {}
        # a row that ended by EOS in this chunk ended at step lengths - 1: check the steps before it
        last = {i: (int(lengths[i]) - 1 if not running[i] else end) for i in rows}
        spans = [tokens[i, max(0, start + 1 - window) : last[i]].tolist() for i in rows]
        texts = self.tokenizer.batch_decode(spans)
        cuts = {}
        for i, text in zip(rows, texts):
            if "\ufffd" not in text and not any(x in text for x in stop):
                continue
            for t in range(start, last[i]):
                tail = self.tokenizer.decode(tokens[i, max(0, t + 1 - window) : t + 1])
                if any(x in tail for x in stop):
                    cuts[i] = t + 1
                    break
        return cuts


class _Uniforms:
    """The dynamic engine's draws, all at once: at step t it draws `torch.rand(total)` (float64)
    and reads rows offset..offset+N. `leave_generator_after(used)` rewinds the generator and
    redraws `used` steps, so it ends where the dynamic engine, which stops drawing when every row
    has finished, leaves it."""

    def __init__(self, generator: torch.Generator | None, device: torch.device, total: int, offset: int, N: int):
        if generator is None:
            generator = torch.default_generator if device.type == "cpu" else torch.cuda.default_generators[
                device.index if device.index is not None else torch.cuda.current_device()]
        self.generator, self.device, self.total, self.rows = generator, device, total, slice(offset, offset + N)
        self.start = generator.get_state()

    def _draw(self) -> torch.Tensor:
        return torch.rand(self.total, generator=self.generator, device=self.device, dtype=torch.float64)

    def all_rows(self, T: int) -> torch.Tensor:  # (T, N)
        return torch.stack([self._draw()[self.rows] for _ in range(T)])

    def leave_generator_after(self, used: int) -> None:
        self.generator.set_state(self.start)
        for _ in range(used):
            self._draw()
