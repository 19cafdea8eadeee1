"""The policy update: mu optimizer steps on one generation batch.

The planning is pure functions on tensors, tested on hand-built inputs:
- `dropped_rows` and `loss_mask`: which completions and tokens are trained;
- `normalizer_counts`: the sequence and token counts of the loss normalisers (grpo.py);
- `plan_micro_batches`: which rows go into which micro-batch, and in what order.
`PolicyUpdate` runs them: for each of mu iterations, a forward and backward per micro-batch
(gradients accumulate over the whole batch), clipping, one optimizer and scheduler step.

Departures from TRL's GRPOTrainer:
- Old log-probs are the rollout's own sampling log-probs (computed at the loss's temperature),
  for every mu, so no extra forward pass is run for them.
- In a single process, when beta = 0, with no router loss and no entropy bonus, completions whose advantage
  is exactly 0 are not run through the model: their loss and gradient are exactly 0. They still
  count in the loss normalisers and the optimizer still steps, so the update is the same. (With
  several processes every row runs, so that every rank runs the same micro-batches.)
- `grpo.drop_zero_variance_groups` (DAPO's filter) takes groups whose rewards are all equal out
  of the batch: out of the loss and out of both normaliser counts, for every loss type. (The
  refill, `grpo.dynamic_sampling`, happens before the update: dynamic_sampling.py.)
- Prefix grouping (`optim.prefix_grouping`, single process, dense models): micro-batches never
  mix prompts and each prompt runs once per micro-batch (logprobs.grouped_completion_logprobs).
- `grpo.top_entropy_quantile`: the threshold is taken once per generation batch over every
  process's trained tokens, from the sampling entropies the rollout already computed (TRL takes
  it per micro-batch from a fresh forward), so it does not move with the micro-batch split.
- `grpo.entropy_coef` (TRL's name): the bonus uses the entropy of the policy being trained,
  with gradients, at every trained token, computed in the same forward as the log-probs, and
  its mean is taken over the whole batch's trained tokens (TRL: per micro-batch).
- Mixed precision (precision.py): the forward runs under autocast to the compute dtype; the
  log-probs, entropies and loss are fp32. The gap between the sampler's log-probs and the
  update's is measured in the first iteration, which runs before any optimizer step, so its
  log-probs are the old policy's as the update computes them: with our engine this costs no
  extra forward (TRL and the vLLM path recompute them in one). With the importance correction
  on, those first-iteration log-probs become the PPO ratio's old log-probs and the sampler's
  weight each token by min(pi_train / pi_sampler, cap) (`rollout.importance_correction`).
- On-policy distillation (`distill.teacher`): the advantages come in per token (N, T); a row is
  skipped only when every one of its per-token advantages is 0, which the teacher's reverse-KL
  term makes practically never happen, so rows of constant-reward groups are trained.
"""

from __future__ import annotations

import torch

from .adapters import reference_context
from .config import Config
from .cpu_kernels import gqa_attention
from .distributed import Collective
from .engine import RolloutBatch
from .errors import UserError
from .grpo import LossNormalizer, policy_loss
from .logprobs import (
    completion_logprobs,
    grouped_completion_logprobs,
    micro_batch_inputs,
    teacher_forced_logits,
    token_logprobs,
)
from .moe import MoESpec, expert_load, load_metrics
from .precision import Precision
from .sharded import accumulation_boundary, is_sharded

AUTO_MICRO_BATCH_TOKENS = 16384  # optim.micro_batch_tokens: auto on CUDA (verl's ppo_max_token_len_per_gpu default)


def micro_batch_tokens_on(optim, device: torch.device, world: int) -> int | None:
    """`optim.micro_batch_tokens` resolved: auto = AUTO_MICRO_BATCH_TOKENS on CUDA in a single
    process unless micro_batch_size was set, else None (micro-batches of micro_batch_size rows)."""
    if optim.micro_batch_tokens != "auto":
        return optim.micro_batch_tokens
    rows_chosen = optim.micro_batch_size != type(optim)().micro_batch_size
    return AUTO_MICRO_BATCH_TOKENS if device.type == "cuda" and world == 1 and not rows_chosen else None


def prefix_grouping_on(setting: bool | str, device: torch.device) -> bool:
    """`optim.prefix_grouping` resolved: auto = on for CPU (it saves prompt tokens where compute
    binds), off for CUDA (it splits the batch into per-prompt passes where kernel launches bind)."""
    return device.type != "cuda" if setting == "auto" else bool(setting)


def importance_correction_on(cfg: Config, precision: Precision) -> bool:
    """`rollout.importance_correction` resolved: auto = on with vLLM when it recomputes the old
    log-probs, and with our engine in half-precision compute (its decode kernels and the update's
    differ); off with our engine in fp32 (the two agree up to float rounding)."""
    setting = cfg.rollout.importance_correction
    if setting != "auto":
        return bool(setting)
    if cfg.rollout.backend == "vllm":
        return cfg.rollout.vllm.recompute_logprobs
    return precision.half


class SamplerGap:
    """Sums of the gap between the sampler's log-probs and the update's first-iteration ones, over
    the trained tokens of the rows the update ran; `metrics` turns every process's sums into sampler/*."""

    def __init__(self, cap: float):
        self.cap = cap
        self.sums: dict = dict.fromkeys(("tokens", "abs_diff", "excess", "excess_sq", "weight", "capped"), 0.0)  # 0-d tensors once added to
        self.largest = 0.0

    def add(self, train_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> None:
        """train_logp, sampler_logp, mask: (b, T'). Masked sums on the device: nothing is read back here."""
        keep = mask.bool()
        diff = torch.where(keep, train_logp.detach().double() - sampler_logp.double(), 0.0)  # (b, T') log pi_train - log pi_sampler
        ratio = diff.exp()  # (b, T') 1 where not kept
        excess = ratio - 1  # the spread is taken from sums of (r - 1): r is ~1, and r^2 sums would cancel it away
        weight = torch.where(keep, ratio.clamp(max=self.cap), 0.0)
        for key, value in (("tokens", keep.sum()), ("abs_diff", diff.abs().sum()), ("excess", excess.sum()),
                           ("excess_sq", (excess * excess).sum()), ("weight", weight.sum()), ("capped", (ratio > self.cap).sum())):
            self.sums[key] = self.sums[key] + value
        self.largest = torch.maximum(torch.as_tensor(self.largest, dtype=diff.dtype, device=diff.device), diff.abs().max())

    def metrics(self, collective: Collective, corrected: bool) -> dict:
        local = host_values({**self.sums, "largest": self.largest})
        largest = collective.max({"largest": local.pop("largest")})["largest"]
        sums = collective.sum(local)
        n = sums["tokens"]
        if n == 0:
            return {}
        mean_excess = sums["excess"] / n
        out = {
            "sampler/logprob_abs_diff": sums["abs_diff"] / n,
            "sampler/logprob_abs_diff_max": largest,
            "sampler/ratio_std": max(sums["excess_sq"] / n - mean_excess**2, 0.0) ** 0.5,  # of pi_train / pi_sampler
        }
        if corrected:
            out["sampler/importance_weight_mean"] = sums["weight"] / n
            out["sampler/importance_weight_capped_frac"] = sums["capped"] / n
        return out


def host_values(values: dict) -> dict[str, float]:
    """Floats of a dict of 0-d tensors (and numbers), read with one device-to-host copy."""
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in values.items() if not isinstance(v, torch.Tensor)}
    if keys:
        stacked = torch.stack([values[k].detach().double().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, stacked))
    return {k: out[k] for k in values}


def dropped_rows(zero_variance: torch.Tensor, group_size: int, enabled: bool) -> torch.Tensor:
    """(N,) True for every row of a zero-variance group (`grpo.zero_variance_groups`, (B,)) when
    DAPO's filter is on, else all False."""
    if not enabled:
        return torch.zeros(zero_variance.shape[0] * group_size, dtype=torch.bool)
    return zero_variance.repeat_interleave(group_size)  # (N,)


def loss_mask(
    completion_mask: torch.Tensor,  # (N, T) 1 = sampled token
    rewards: torch.Tensor,  # (N,) weighted total, NaN = no reward
    truncated: torch.Tensor,  # (N,) bool
    dropped: torch.Tensor,  # (N,) bool, rows taken out of the batch (dropped_rows)
    mask_truncated: bool,
) -> torch.Tensor:
    """The trained tokens (N, T): sampled tokens of completions that have a reward, are not
    dropped, and (with `mask_truncated`) did not hit max_new_tokens."""
    mask = completion_mask.clone()  # (N, T)
    mask[torch.isnan(rewards)] = 0
    if mask_truncated:
        mask[truncated] = 0
    mask[dropped] = 0
    return mask


def normalizer_counts(mask: torch.Tensor, dropped: torch.Tensor) -> dict[str, int]:
    """This process's share of the loss normalisers: sequences still in the batch (masked ones
    included, as in TRL; dropped groups excluded) and trained tokens."""
    return {"sequences": int((~dropped).sum()), "tokens": int(mask.sum())}


def plan_micro_batches(
    lengths: torch.Tensor,  # (N,) trained tokens per row
    prompt_lengths: torch.Tensor,  # (N,) real prompt tokens per row
    advantages: torch.Tensor | None,  # (N,), or (N, T) per token; only read with skip_zero_advantage
    micro_batch_size: int,
    group_size: int,
    prefix_grouping: bool,
    skip_zero_advantage: bool,
    keep_every_row: bool,
    token_budget: int | None = None,
) -> list[torch.Tensor]:
    """Row indices of each micro-batch, in the order they run.

    Rows with no trained token are skipped, and so are rows with advantage 0 (per-token
    advantages: 0 at every token) when `skip_zero_advantage` (their gradient is exactly 0). `keep_every_row` (several processes)
    keeps them all, so every rank runs the same number of micro-batches (DDP's all-reduce).
    Rows are sorted by prompt + completion length (little padding); with `prefix_grouping`
    a micro-batch never mixes prompts (row // G is the prompt).
    With `token_budget` (optim.micro_batch_tokens) a micro-batch takes rows in that order for as
    long as its padded size stays within the budget, instead of `micro_batch_size` rows: padded
    size = rows x (widest prompt + longest completion), or with `prefix_grouping` the prompt once
    plus rows x longest completion. A row larger than the budget runs alone.
    """
    if keep_every_row:
        trainable = torch.ones_like(lengths, dtype=torch.bool)
    else:
        trainable = lengths > 0
        if skip_zero_advantage:
            assert advantages is not None, "skip_zero_advantage needs the advantages"
            trainable &= (advantages != 0) if advantages.dim() == 1 else (advantages != 0).any(-1)
    rows = torch.nonzero(trainable).flatten()
    total_len = prompt_lengths + lengths  # (N,)
    rows = rows[torch.argsort(total_len[rows], stable=True)]
    if prefix_grouping:
        prompts = len(lengths) // group_size
        groups = [rows[rows // group_size == p] for p in range(prompts)]
        if token_budget is not None:
            return [c for g in groups for c in split_by_tokens(g, prompt_lengths, lengths, token_budget, grouped=True)]
        return [c for g in groups for c in torch.split(g, micro_batch_size) if len(c)]
    if token_budget is not None:
        return split_by_tokens(rows, prompt_lengths, lengths, token_budget, grouped=False)
    return [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]


def split_by_tokens(rows: torch.Tensor, prompt_lengths: torch.Tensor, lengths: torch.Tensor, budget: int,
                    grouped: bool) -> list[torch.Tensor]:
    """`rows` (in order) cut into consecutive micro-batches whose padded token count stays within
    `budget` (see plan_micro_batches); each micro-batch holds at least one row."""
    out, start = [], 0
    prompt, completion = prompt_lengths[rows].tolist(), lengths[rows].tolist()
    widest_prompt = longest = 0
    for i in range(len(prompt)):
        p, c = max(widest_prompt, prompt[i]), max(longest, completion[i])
        n = i - start + 1
        size = (p + n * c) if grouped else n * (p + c)
        if n > 1 and size > budget:
            out.append(rows[start:i])
            start, p, c = i, prompt[i], completion[i]
        widest_prompt, longest = p, c
    if start < len(prompt):
        out.append(rows[start:])
    return out


def trained_tokens(micro: list[torch.Tensor], lengths: torch.Tensor, prompt_lengths: torch.Tensor, prefix_grouping: bool) -> int:
    """Tokens through the model in one pass over `micro`: each row's `lengths` plus its prompt, a
    grouped prompt once per micro-batch (the update's forward and backward, the teacher's forward)."""
    return sum(int(lengths[idx].sum()) + int(prompt_lengths[idx[0]] if prefix_grouping else prompt_lengths[idx].sum()) for idx in micro)


def entropy_selection(entropies: torch.Tensor, mask: torch.Tensor, quantile: float, collective: Collective) -> tuple[torch.Tensor, dict]:
    """The entropy keep mask (N, T) of `grpo.top_entropy_quantile`, with its threshold taken over the
    trained tokens of every process, and the token-entropy percentiles of the batch (metrics)."""
    valid = entropies[mask.bool()].float()  # (M,) this process's trained tokens
    if collective.world > 1:
        valid = torch.tensor(collective.gather_objects(valid.tolist()), dtype=torch.float32)
    if valid.numel() == 0:
        return torch.ones_like(mask, dtype=torch.float32), {}
    p10, p50, p90 = torch.quantile(valid, torch.tensor([0.1, 0.5, 0.9])).tolist()
    stats = {"entropy/token_p10": p10, "entropy/token_p50": p50, "entropy/token_p90": p90}
    if quantile >= 1:
        return torch.ones_like(mask, dtype=torch.float32), stats
    threshold = float(torch.quantile(valid, 1 - quantile))
    keep = (entropies >= threshold).float() * (mask > 0)  # (N, T)
    stats["entropy/selection_threshold"] = threshold
    stats["entropy/selected_frac"] = float((valid >= threshold).float().mean())
    return keep, stats


def optimizer_and_scheduler(model, cfg: Config):
    """AdamW over the trainable parameters, and the learning-rate schedule (constant after
    warm-up, or cosine to 0 over max_steps x num_iterations optimizer steps). The scheduler is not
    given to accelerate's prepare, which would step it once per process."""
    from transformers import get_scheduler

    o = cfg.optim
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr,
                                  betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay)
    cosine = o.scheduler == "cosine"
    scheduler = get_scheduler("cosine" if cosine else "constant_with_warmup", optimizer, num_warmup_steps=o.warmup_steps,
                              **({"num_training_steps": cfg.max_steps * cfg.grpo.num_iterations} if cosine else {}))
    return optimizer, scheduler


class PolicyUpdate:
    """mu optimizer steps on a generation batch; holds the optimizer-step count."""

    def __init__(self, cfg: Config, accelerator, model, optimizer, scheduler, collective: Collective,
                 moe: MoESpec | None, ref_model=None, precision: Precision | None = None):
        self.cfg, self.accelerator, self.model = cfg, accelerator, model
        self.optimizer, self.scheduler, self.collective = optimizer, scheduler, collective
        self.moe, self.ref_model = moe, ref_model
        self.precision = precision or Precision(torch.float32, "float32")
        self.importance_correction = importance_correction_on(cfg, self.precision)
        self.optimizer_steps = 0
        if cfg.optim.micro_batch_tokens not in (None, "auto") and collective.world > 1:
            raise UserError("optim.micro_batch_tokens: single-process only for now (with several processes every rank must run "
                            "the same number of micro-batches, which a token budget does not guarantee); use optim.micro_batch_size")

    @property
    def loss_beta(self) -> float:
        """The k3 KL term's coefficient in the loss: grpo.beta, except with REINFORCE++, which folds
        the KL into the return instead (trainer / grpo.kl_folded_returns)."""
        return 0.0 if self.cfg.grpo.advantage_estimator == "reinforce_plus_plus" else self.cfg.grpo.beta

    def reference_token_logprobs(self, rollout: RolloutBatch, mask: torch.Tensor) -> torch.Tensor:
        """The reference policy's log-probs of the sampled tokens (N, T) on the CPU, 0 where `mask` is 0."""
        grouped = self.prefix_grouping
        micro = plan_micro_batches(mask.sum(-1), rollout.prompt_mask.sum(-1), None, self.cfg.optim.micro_batch_size,
                                   rollout.group_size, grouped, skip_zero_advantage=False, keep_every_row=False)
        out = torch.zeros(mask.shape, dtype=torch.float32)  # (N, T)
        for idx, logp in zip(micro, self._reference_logprobs(rollout, mask, micro, grouped).values()):
            out[idx, : logp.shape[1]] = logp.detach().float().cpu()
        return out * mask

    @property
    def prefix_grouping(self) -> bool:
        # DDP expects one forward per backward and the router loss one batch of whole sequences;
        # the grouped path runs the model twice.
        grouping = prefix_grouping_on(self.cfg.optim.prefix_grouping, self.accelerator.device)
        return grouping and self.accelerator.num_processes == 1 and self.moe is None

    def __call__(self, rollout: RolloutBatch, advantages: torch.Tensor, mask: torch.Tensor, dropped: torch.Tensor,
                 entropy_coef: float | None = None) -> dict:
        """advantages (N,) or per token (N, T), loss mask (N, T) and dropped rows (N,) of this
        process, and the entropy bonus's coefficient for this step (default grpo.entropy_coef; the
        trainer passes the adaptive controller's); returns summed statistics."""
        cfg = self.cfg
        world = self.collective.world
        counts = self.collective.sum(normalizer_counts(mask, dropped))
        normalizer = LossNormalizer(cfg.grpo.loss_type, int(counts["sequences"]), int(counts["tokens"]), cfg.rollout.max_new_tokens)
        lengths = mask.sum(-1)  # (N,)
        prompt_lengths = rollout.prompt_mask.sum(-1)  # (N,)
        router_loss = self.moe is not None and self.moe.aux_loss_coef > 0
        entropy_coef = cfg.grpo.entropy_coef if entropy_coef is None else entropy_coef
        bonus = entropy_coef > 0  # every trained row has a gradient then, advantage 0 or not
        grouped = self.prefix_grouping
        micro = plan_micro_batches(
            lengths, prompt_lengths, advantages, cfg.optim.micro_batch_size, rollout.group_size, grouped,
            skip_zero_advantage=self.loss_beta == 0 and not router_loss and not bonus, keep_every_row=world > 1,
            token_budget=micro_batch_tokens_on(cfg.optim, self.accelerator.device, world),
        )
        ref_logps = self._reference_logprobs(rollout, mask, micro, grouped) if self.loss_beta > 0 else {}
        has_entropy = cfg.rollout.backend != "vllm" or cfg.rollout.vllm.recompute_logprobs
        keep, entropy_stats = entropy_selection(rollout.entropies, mask, cfg.grpo.top_entropy_quantile, self.collective) if has_entropy else (None, {})
        select = keep is not None and cfg.grpo.top_entropy_quantile < 1

        # our engine sampled with this policy: its gap to the update is measured in the first iteration
        own_sampler = rollout.sampler_logprobs is None and cfg.rollout.backend == "hf"
        correct_own = own_sampler and self.importance_correction
        gap = SamplerGap(cfg.rollout.importance_cap)
        train_old: dict[int, torch.Tensor] = {}  # micro-batch -> first-iteration log-probs (b, T'), with correct_own

        totals = dict.fromkeys(("loss", "tokens", "clip_low_tokens", "clip_high_tokens", "kl_sum", "ratio_sum", "grad_norm",
                                "sequences", "clipped_sequences", "policy_entropy_sum"), 0.0)  # the same keys on every process (summed across them)
        aux_sum, load_sum = 0.0, None
        self.model.train()
        for iteration in range(cfg.grpo.num_iterations):
            self._zero_grads()
            for k, idx in enumerate(micro):
                if self.moe is not None:
                    logp, c_mask, aux, load, entropy = self._moe_logprobs(rollout, mask, idx, bonus)  # (b, T'), (b, T'), scalar, (E,), (b, T')
                    aux_sum = aux_sum + aux.detach()
                    load_sum = load if load_sum is None else load_sum + load
                else:
                    logp, c_mask, entropy = self._logprobs(self.model, rollout, mask, idx, grouped, bonus)  # (b, T') each
                width = c_mask.shape[1]
                adv = advantages[idx] if advantages.dim() == 1 else advantages[idx, :width]  # (b,) or (b, T')
                old_logp = rollout.logprobs[idx, :width].to(logp.device)  # (b, T') ours: the sampler's; vLLM: recomputed
                sampler_logp = old_logp if rollout.sampler_logprobs is None else rollout.sampler_logprobs[idx, :width].to(logp.device)
                if own_sampler and iteration == 0:
                    gap.add(logp, sampler_logp, c_mask)
                    if correct_own:
                        train_old[k] = logp.detach()
                if correct_own:  # the update's own first-iteration log-probs are the old ones
                    old_logp = train_old[k]
                is_weights = None
                if self.importance_correction and (correct_own or rollout.sampler_logprobs is not None):
                    is_weights = (old_logp - sampler_logp).exp().clamp(max=cfg.rollout.importance_cap)  # (b, T') min(pi_train / pi_sampler, cap)
                loss, stats = policy_loss(
                    logp,
                    old_logp,
                    adv.to(logp.device),
                    c_mask,
                    normalizer,
                    epsilon=cfg.grpo.epsilon,
                    epsilon_high=cfg.grpo.epsilon_high,
                    beta=self.loss_beta,
                    ref_logp=ref_logps.get(k),
                    token_weights=self._token_weights(idx, width, keep if select else None, is_weights),
                    importance_sampling_level=cfg.grpo.importance_sampling_level,
                    entropy=entropy,
                    entropy_coef=entropy_coef,
                )
                if router_loss:  # mean over micro-batches (and processes) of the aux loss
                    loss = loss + self.moe.aux_loss_coef * aux / (len(micro) * world)
                # `loss` is this process's share of the global-batch loss; DDP averages gradients
                # over processes, so scaling by W makes the all-reduced gradient their sum.
                with accumulation_boundary(self.accelerator, self.model, last=k == len(micro) - 1):
                    self.accelerator.backward(loss * world)
                totals["loss"] = totals["loss"] + loss.detach()
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
            totals["grad_norm"] += self._optimizer_step()
        self.optimizer.zero_grad(set_to_none=True)  # free the gradients until the next update (peak memory)

        mu = cfg.grpo.num_iterations
        grad_norm = totals.pop("grad_norm") / mu  # already identical on every process
        totals = {k: v / mu for k, v in host_values(totals).items()}  # the update's one read of its statistics
        totals["trained_sequences"] = sum(len(idx) for idx in micro)
        totals["micro_batches"] = len(micro)  # per process and iteration
        totals["trained_tokens"] = trained_tokens(micro, lengths, prompt_lengths, grouped)
        totals = self.collective.sum(totals)
        totals["grad_norm"] = grad_norm
        totals["entropy"] = entropy_stats  # already global
        totals["sampler"] = gap.metrics(self.collective, correct_own) if own_sampler else {}
        if load_sum is not None:
            passes = len(micro) * mu * world
            load = torch.tensor(self.collective.gather_objects([load_sum.tolist()])).sum(0) / passes  # (E,)
            totals["moe"] = load_metrics(load, self.collective.sum({"aux": float(aux_sum)})["aux"] / passes)
        return totals

    def _optimizer_step(self) -> float:
        """Clip, step the optimizer and the scheduler; returns the gradient norm before clipping."""
        max_norm = self.cfg.optim.max_grad_norm if self.cfg.optim.max_grad_norm > 0 else float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer_steps += 1
        return float(grad_norm if grad_norm is not None else float("nan"))  # DeepSpeed: the engine's norm

    def _reference_logprobs(self, rollout: RolloutBatch, mask: torch.Tensor, micro: list[torch.Tensor], grouped: bool) -> dict:
        """Reference-policy log-probs of each micro-batch (b, T'), for the KL term."""
        policy = self.accelerator.unwrap_model(self.model)
        reference = self.ref_model if self.ref_model is not None else policy  # LoRA: adapters off
        with torch.no_grad(), reference_context(reference):
            return {k: self._logprobs(reference, rollout, mask, idx, grouped)[0] for k, idx in enumerate(micro)}

    def _zero_grads(self) -> None:
        """Zero gradients that exist and allocate the missing ones as zeros: AdamW must step (decay
        its moments) even when no micro-batch ran, and skips parameters whose grad is None."""
        self.optimizer.zero_grad(set_to_none=False)
        if is_sharded(self.accelerator):  # FSDP/DeepSpeed own their gradient storage
            return
        for p in self.accelerator.unwrap_model(self.model).parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)

    def _token_weights(self, idx: torch.Tensor, width: int, keep: torch.Tensor | None,
                       is_weights: torch.Tensor | None) -> torch.Tensor | None:
        """Weights of each token's policy-gradient term (b, T'): the importance weights (b, T') when
        the correction is on, times the entropy selection (N, T) when it is on."""
        weights = is_weights
        if keep is not None:
            weights = keep[idx, :width] if weights is None else weights * keep[idx, :width]
        return None if weights is None else weights.to(self.accelerator.device)

    def _moe_logprobs(self, rollout: RolloutBatch, mask: torch.Tensor, idx: torch.Tensor, with_entropy: bool = False):
        """Policy log-probs (b, T'), loss mask (b, T'), router aux loss, per-expert load (E,) and,
        with `with_entropy`, the policy's token entropies (b, T') with gradients (else None)."""
        p_ids, p_mask, c_ids, c_attn, c_mask = micro_batch_inputs(rollout, mask, idx, self.accelerator.device)
        with self.precision.autocast(self.accelerator.device):
            logits, out, attention_mask = teacher_forced_logits(
                self.model, p_ids, p_mask, c_ids, c_attn, self.cfg.rollout.temperature, output_router_logits=True
            )  # (b, T', V) fp32: the logits are upcast inside
        logp, entropy = token_logprobs(logits, c_ids, with_entropy)  # (b, T'), (b, T') or None
        load = expert_load(out.router_logits, attention_mask, self.moe.top_k)
        return logp, c_mask, out.aux_loss, load, entropy

    def _logprobs(self, model, rollout: RolloutBatch, mask: torch.Tensor, idx: torch.Tensor, grouped: bool, with_entropy: bool = False):
        """Log-probs of the completions in rows `idx` under `model` (b, T'), their loss mask (b, T')
        and, with `with_entropy`, the token entropies (b, T') with gradients (else None)."""
        p_ids, p_mask, c_ids, c_attn, c_mask = micro_batch_inputs(rollout, mask, idx, self.accelerator.device)
        T = self.cfg.rollout.temperature
        with gqa_attention(self.accelerator.unwrap_model(model)), self.precision.autocast(self.accelerator.device):  # CPU: shared KV heads
            if grouped:
                prompt = p_ids[0][p_mask[0].bool()]  # (Lp,) every row of idx shares it
                out = grouped_completion_logprobs(model, prompt, c_ids, c_attn, T, with_entropy=with_entropy)
            else:
                out = completion_logprobs(model, p_ids, p_mask, c_ids, c_attn, T, with_entropy=with_entropy)
        logp, entropy = out if with_entropy else (out, None)
        return logp, c_mask, entropy
