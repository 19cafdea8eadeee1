"""The GRPO training loop: prompts -> rollout -> rewards -> advantages -> mu updates -> log -> checkpoint.

One training step consumes `prompts_per_step` (B) problems and samples G completions for each.
The policy is updated `grpo.num_iterations` (mu) times on that batch, each update one optimizer
step accumulated over length-sorted micro-batches. Departures from TRL's GRPOTrainer:
- Old log-probs are the rollout's own sampling log-probs (computed at the same temperature
  as the loss), for every mu, so no extra forward pass is ever run for them.
- When beta = 0, completions whose advantage is exactly 0 (e.g. groups where every sample got
  the same reward) are not run through the model: their loss and gradient are exactly 0. They
  still count in the loss normalisers and the optimizer still steps, so the update is the same.
- Completions whose rewards are all None are masked out (no advantage, no loss).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from rewards.extract import extract_answer
from rewards.format import is_well_formatted

from . import checkpoint as ckpt
from .config import Config, RewardSpec, dump_config
from .cpu_kernels import gqa_attention
from .memory import pin_mmap_threshold
from .adapters import apply_lora, reference_context
from .distributed import Collective
from .moe import expert_load, load_metrics, moe_spec
from .sharded import accumulation_boundary, check_engine_matches_launch, configure_deepspeed, full_parameters_for_generation, gathered_state_dict, is_sharded
from .tasks import PromptSampler, load_task
from .errors import ConfigError, UserError
from .evaluation import CORRECT, answer_fallback, evaluate, problem_columns
from .grpo import LossNormalizer, group_advantages, group_reward_std, policy_loss
from .jsonl import JsonlWriter, read_records, truncate_after_step
from .models import eos_token_ids, load_model
from .prompts import encode_prompt, render_prompt
from .reward_runner import RewardRunner
from .rollout import RolloutBatch, RolloutEngine, completion_logprobs, completion_logprobs_and_entropy, grouped_completion_logprobs
from .traces import AlarmMonitor, Analyzer, step_statistics

RUN_FILES = ("metrics.jsonl", "traces.jsonl", "eval.jsonl", "eval_traces.jsonl")


def quiet_library_progress_bars() -> None:
    """transformers' 'Loading weights' / 'Writing model shards' bars would bury our own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_dir(recipe_name: str) -> Path:
    return Path("runs") / f"{recipe_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class GRPOTrainer:
    def __init__(self, cfg: Config, recipe_name: str = "run", quiet: bool = False):
        from accelerate import Accelerator

        self.cfg = cfg
        self.quiet = quiet
        self.run_dir = Path(cfg.output_dir) if cfg.output_dir else default_run_dir(recipe_name)
        if cfg.resume is True and not cfg.output_dir:
            raise ConfigError("resume: true needs output_dir (the run to resume); or pass resume=<checkpoint dir>")
        if isinstance(cfg.resume, str) and not cfg.output_dir:
            self.run_dir = Path(cfg.resume).resolve().parent.parent
        if cfg.resume is False and (self.run_dir / "metrics.jsonl").exists():
            raise UserError(f"output_dir {self.run_dir} already holds a run; pass resume=true or choose another output_dir")

        quiet_library_progress_bars()
        use_cuda = torch.cuda.is_available()
        if not use_cuda:  # processes on one machine share its cores
            local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_processes))
            pin_mmap_threshold()  # freed activations go back to the OS (memory.py)
        for tracker in cfg.report_to:
            if tracker == "tensorboard" and not _importable("tensorboard") and not _importable("tensorboardX"):
                raise ConfigError("report_to: tensorboard is not installed (pip install tensorboard)")
            if tracker == "wandb" and not _importable("wandb"):
                raise ConfigError("report_to: wandb is not installed (pip install wandb)")
        try:
            self.accelerator = Accelerator(cpu=not use_cuda, log_with=cfg.report_to or None, project_dir=str(self.run_dir))
        except ImportError as e:  # e.g. a DeepSpeed config without deepspeed installed
            raise UserError(f"accelerate: {e}") from None
        self.collective = Collective(self.accelerator)
        check_engine_matches_launch(self.accelerator)
        fsdp = getattr(self.accelerator.state, "fsdp_plugin", None)
        if fsdp is not None and getattr(fsdp, "fsdp_version", 2) != 2:
            raise ConfigError("fsdp_config.fsdp_version: use 2 (FSDP2); generation needs its unshard()")
        if is_sharded(self.accelerator) and cfg.resume is not False:
            raise ConfigError("resume: FSDP/DeepSpeed checkpoints hold weights only (sharded optimizer state is not saved); "
                              "start a new run with model.name=<checkpoint dir>, or train with DDP")
        if cfg.prompts_per_step % self.collective.world:
            raise ConfigError(
                f"prompts_per_step: {cfg.prompts_per_step} prompts cannot be split over {self.collective.world} processes; "
                "use a multiple of the process count"
            )
        seed_everything(cfg.seed)

        # Everything that can fail on bad input is checked before the model is loaded.
        self.rewards = RewardRunner(cfg.rewards, cfg.weights())
        acc_index = self.rewards.names.index(cfg.accuracy_reward_name)
        acc_spec = cfg.rewards[acc_index]
        self.accuracy = RewardRunner([RewardSpec(acc_spec.name, 1.0, acc_spec.kwargs)], [1.0])
        self.data = load_task(cfg.data)
        self.analyzer = Analyzer(cfg.traces.reflection_markers, list(cfg.traces.extra_reflection_markers))
        self.alarms = AlarmMonitor(cfg.traces.alarms)
        self.answer_fallback = answer_fallback(self.accuracy)
        self.sampler = PromptSampler(self.data, cfg.seed)

        loaded = load_model(cfg.model.name, self.accelerator.device, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.cache_dir)
        self.tokenizer = loaded.tokenizer
        model = loaded.model
        self.num_parameters = sum(p.numel() for p in model.parameters())
        model.config.use_cache = False
        self.moe = moe_spec(model, cfg.model.router_aux_loss_coef)
        self.ref_model = None
        if cfg.grpo.beta > 0 and cfg.lora.r == 0:  # with LoRA the reference is the policy with adapters off
            import copy

            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        if cfg.lora.r > 0:
            model = apply_lora(model, cfg.lora)
        self.num_trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.optim.lr,
            betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2),
            weight_decay=cfg.optim.weight_decay,
        )
        from transformers import get_scheduler

        scheduler = get_scheduler(
            "constant_with_warmup" if cfg.optim.scheduler == "constant" else "cosine",
            optimizer,
            num_warmup_steps=cfg.optim.warmup_steps,
            **({} if cfg.optim.scheduler == "constant" else {"num_training_steps": cfg.max_steps * cfg.grpo.num_iterations}),
        )
        # The scheduler is not prepared: accelerate would step it once per process.
        configure_deepspeed(self.accelerator, cfg.optim.micro_batch_size, cfg.optim.max_grad_norm)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        self.vllm = None
        if cfg.rollout.backend == "vllm":
            from .vllm_rollout import VLLMRolloutEngine

            self.vllm = self.engine = VLLMRolloutEngine(
                loaded.source, self.tokenizer, eos_token_ids(model, self.tokenizer), self.tokenizer.pad_token_id, cfg.rollout.vllm,
                max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0), cfg.seed, next(model.parameters()).dtype,
            )
            self._print(f"vLLM engine started in {self.vllm.startup_seconds:.1f} s")
        else:
            self.engine = RolloutEngine(
                self.accelerator.unwrap_model(self.model), self.tokenizer, eos_token_ids(model, self.tokenizer), self.tokenizer.pad_token_id
            )
        self.optimizer_steps = 0
        self.synced_at = 0  # optimizer step whose weights the vLLM engine holds
        self.generator = torch.Generator(device=self.accelerator.device).manual_seed(cfg.seed)  # sampling happens on the model's device
        self.step = 0
        self.eval_history: list[dict] = []
        self.is_main = self.accelerator.is_main_process

        resume_from = ckpt.find_resume_checkpoint(cfg.resume, self.run_dir)
        if resume_from is not None:
            state = ckpt.load_training_state(
                resume_from, self.accelerator.unwrap_model(self.model), self.optimizer, self.scheduler, self.generator
            )
            self.step = state["step"]
            self.sampler.load_state_dict(state["sampler"])
            if self.is_main:
                for name in RUN_FILES:
                    truncate_after_step(self.run_dir / name, self.step)
                ckpt.set_aside_newer_checkpoints(self.run_dir, self.step)
            self.eval_history = list(read_records(self.run_dir / "eval.jsonl"))
            self._print(f"resumed from {resume_from} at step {self.step}")
        self.resumed_from = resume_from
        if self.vllm is not None and resume_from is not None:
            self._sync_vllm()

        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(cfg))
            self.metrics_file = JsonlWriter(self.run_dir / "metrics.jsonl")
            self.traces_file = JsonlWriter(self.run_dir / "traces.jsonl")
            self.eval_file = JsonlWriter(self.run_dir / "eval.jsonl")
            self.eval_traces_file = JsonlWriter(self.run_dir / "eval_traces.jsonl")
            if cfg.report_to:
                self.accelerator.init_trackers("rl_reasoning", config=_flat(cfg.to_dict()))

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        if cfg.eval.at_start and self.step == 0 and self.data.held_out:
            self.run_eval()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="GRPO", unit="step", disable=self.quiet or not self.is_main, dynamic_ncols=True)
        last = {}
        try:
            while self.step < cfg.max_steps:
                metrics = self.train_step()
                self.step += 1
                metrics["step"] = self.step
                last = metrics
                self._log(metrics)
                for alarm in metrics.get("alarms", []):
                    self._warn(f"step {self.step}: {alarm}", bar)
                bar.update(1)
                bar.set_postfix(
                    reward=f"{metrics['reward/mean']:.3f}",
                    acc=f"{metrics['accuracy']:.2f}",
                    fmt=f"{metrics['format_rate']:.2f}",
                    len=f"{metrics['completions/mean_length']:.0f}",
                    s=f"{metrics['time/step']:.1f}",
                )
                if self.step % cfg.log_every == 0 and not self.quiet and self.is_main:
                    bar.write(_summary_line(metrics))
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.max_steps and self.data.held_out:
                    self.run_eval()
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                    self.save()
        finally:
            bar.close()
        if cfg.eval.at_end and self.data.held_out and (not self.eval_history or self.eval_history[-1]["step"] != self.step):
            self.run_eval()
        final_checkpoint = self.save()
        summary = self.summary(last, final_checkpoint)
        if self.collective.world > 1:
            checksums = self.collective.parameter_checksums(self.accelerator.unwrap_model(self.model))
            summary["processes"] = self.collective.world
            summary["replica_checksums"] = checksums  # one per process; equal when the replicas agree
            if len(set(checksums)) > 1:
                self._print(f"warning: model replicas differ across processes (checksums {checksums})")
        if self.is_main:
            import json

            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.close()
        return summary

    def train_step(self) -> dict:
        cfg = self.cfg
        G = cfg.rollout.num_generations
        t_start = time.perf_counter()
        shard = self.collective.shard
        problems = self.sampler.next_batch(cfg.prompts_per_step)  # the global batch, identical on every process
        prompt_texts = [render_prompt(self.tokenizer, p["question"], cfg.prompt) for p in problems]
        mine = shard.prompt_slice(len(problems))  # this process's prompts, with all G of their completions
        prompt_ids = [encode_prompt(self.tokenizer, t, cfg.prompt.template) for t in prompt_texts[mine]]

        self.generator.manual_seed(rollout_seed(cfg.seed, self.step))
        n_local = len(prompt_ids) * G
        with self._generation_engine() as engine:
            rollout = engine.generate(prompt_ids, cfg.rollout, self.generator, shard=(shard.rank * n_local, len(problems) * G))
        t_gen = time.perf_counter()
        sampler_stats = self._recompute_old_logprobs(rollout) if self._recomputes else {}
        t_gen_end = time.perf_counter()

        completions = [cfg.prompt.prefill + t for t in rollout.texts]  # what the rewards judge
        columns = problem_columns(problems[mine], G)
        completion_ids = [ids[:n].tolist() for ids, n in zip(rollout.completion_ids, rollout.lengths)]
        rewards = self.rewards(completions, columns, [t for t in prompt_texts[mine] for _ in range(G)], self.step + 1, completion_ids=completion_ids)
        t_rew = time.perf_counter()

        rows = self._gather_rows(rollout, rewards, completions)  # every completion of the global batch
        rows.advantages = group_advantages(rows.rewards, G, cfg.grpo.scale_rewards)  # (B*G,)
        advantages = rows.advantages[shard.row_slice(len(rows.advantages))]  # (N,) this process's rows
        mask = rollout.completion_mask.clone()  # (N, T)
        mask[torch.isnan(rewards.total)] = 0
        if cfg.grpo.mask_truncated_completions:
            mask[rollout.truncated] = 0
        if cfg.grpo.drop_zero_variance_groups:
            flat = (group_reward_std(rows.rewards, G) == 0).repeat_interleave(G)  # (B*G,) all rows of the batch
            mask[flat[shard.row_slice(len(flat))]] = 0
        update_stats = self.update(rollout, advantages, mask)
        if self.vllm is not None:
            sampler_stats["vllm/weight_staleness"] = self.optimizer_steps - cfg.grpo.num_iterations - self.synced_at
            if (self.step + 1) % cfg.rollout.vllm.sync_every == 0:
                sampler_stats["vllm/sync_seconds"] = self._sync_vllm()
        t_upd = time.perf_counter()

        correct = rows.components[cfg.accuracy_reward_name] >= CORRECT  # (B*G,)
        analyses = self._analyze(rows.completions, problems, G, correct, rows.lengths) if self.is_main else []
        metrics = self._step_metrics(rows, update_stats)
        metrics.update(self.collective.mean_of_dicts({"s": sampler_stats})["s"] if sampler_stats else {})
        metrics.update(step_statistics(analyses))
        seconds = self.collective.max({"generation": t_gen - t_start, "reward": t_rew - t_gen_end, "update": t_upd - t_rew,
                                       "step": t_upd - t_start, "old_logprobs": t_gen_end - t_gen})
        metrics.update(
            {
                "time/generation": seconds["generation"],
                "time/reward": seconds["reward"],
                "time/update": seconds["update"],
                "time/step": seconds["step"],
                **({"time/old_logprobs": seconds["old_logprobs"]} if self._recomputes else {}),
                "throughput/generated_tokens_per_s": float(rows.lengths.sum()) / max(seconds["generation"], 1e-9),
                "throughput/tokens_per_s": float(rows.lengths.sum() + rows.prompt_lengths.sum()) / max(seconds["step"], 1e-9),
            }
        )
        self._write_traces(problems, prompt_texts, rows, analyses)
        if cfg.traces.analyze:
            metrics["alarms"] = [f"{a.name}: {a.message}" for a in self.alarms.update({**metrics, "step": self.step + 1})]
        return metrics

    def _generation_engine(self):
        """Context yielding the engine to sample with: vLLM as is, or ours on the full-parameter policy."""
        import contextlib

        if self.vllm is not None:
            return contextlib.nullcontext(self.vllm)

        @contextlib.contextmanager
        def ours():
            with full_parameters_for_generation(self.accelerator, self.model) as policy:
                self.engine.model = policy
                yield self.engine

        return ours()

    @property
    def _recomputes(self) -> bool:
        return self.vllm is not None and self.cfg.rollout.vllm.recompute_logprobs

    def _sync_vllm(self) -> float:
        """Push the policy's weights (adapters merged) into the vLLM engine."""
        from .vllm_rollout import policy_weights

        seconds = self.vllm.sync_weights(policy_weights(self.accelerator.unwrap_model(self.model)))
        self.synced_at = self.optimizer_steps
        return seconds

    def _recompute_old_logprobs(self, rollout: RolloutBatch) -> dict:
        """Completions sampled by vLLM: the policy's own log-probs and entropies replace vLLM's
        (kept as `sampler_logprobs` for the importance correction). Returns mismatch metrics."""
        cfg = self.cfg
        policy = self.accelerator.unwrap_model(self.model)
        rollout.sampler_logprobs = rollout.logprobs  # (N, Lc)
        logprobs, entropies = torch.zeros_like(rollout.logprobs), torch.zeros_like(rollout.logprobs)  # (N, Lc)
        all_rows = torch.arange(len(rollout))
        was_training = policy.training
        policy.eval()
        for i in range(0, len(rollout), cfg.optim.micro_batch_size):
            idx = all_rows[i : i + cfg.optim.micro_batch_size]
            p_ids, p_mask, c_ids, c_mask = self._micro_inputs(rollout, rollout.completion_mask, idx)
            lp, ent = completion_logprobs_and_entropy(policy, p_ids, p_mask, c_ids, c_mask, cfg.rollout.temperature)
            width = c_ids.shape[1]
            logprobs[idx, :width] = (lp * c_mask).cpu()
            entropies[idx, :width] = (ent * c_mask).cpu()
        policy.train(was_training)
        rollout.logprobs, rollout.entropies = logprobs, entropies
        m = rollout.completion_mask.bool()
        diff = (logprobs - rollout.sampler_logprobs)[m]  # log pi_train - log pi_vllm per token
        weights = diff.exp()
        cap = cfg.rollout.vllm.importance_cap
        return {
            "vllm/logprob_abs_diff": float(diff.abs().mean()) if diff.numel() else 0.0,
            "vllm/importance_weight_mean": float(weights.clamp(max=cap).mean()) if diff.numel() else 1.0,
            "vllm/importance_weight_capped_frac": float((weights > cap).float().mean()) if diff.numel() else 0.0,
        }

    def _gather_rows(self, rollout: RolloutBatch, rewards, completions: list[str]) -> "StepRows":
        """Per-completion values of the whole generation batch, gathered from every process."""
        c = self.collective
        return StepRows(
            completions=c.gather_objects(completions),
            rewards=c.gather(rewards.total),
            components={name: c.gather(v) for name, v in rewards.components.items()},
            lengths=c.gather(rollout.lengths),
            prompt_lengths=c.gather(rollout.prompt_mask.sum(-1)),
            truncated=c.gather(rollout.truncated),
            entropy_sums=None if self.vllm is not None and not self._recomputes else c.gather(rollout.entropies.sum(-1)),
            group_size=rollout.group_size,
            reward_seconds=c.max(rewards.seconds),
            reward_metrics=c.mean_of_dicts(rewards.metrics),
        )

    def _analyze(self, completions, problems, G, correct, lengths) -> list:
        """Self-correction analysis of every completion (empty when traces.analyze is off)."""
        if not self.cfg.traces.analyze:
            return []
        return [
            self.analyzer(text, str(problems[i // G]["answer"]), bool(correct[i]), int(lengths[i]))
            for i, text in enumerate(completions)
        ]

    # ------------------------------------------------------------------ the update

    def update(self, rollout: RolloutBatch, advantages: torch.Tensor, mask: torch.Tensor) -> dict:
        """mu optimizer steps on one generation batch; returns summed statistics."""
        cfg = self.cfg
        N = len(rollout)
        world = self.collective.world
        counts = self.collective.sum({"sequences": N, "tokens": int(mask.sum())})
        normalizer = LossNormalizer(cfg.grpo.loss_type, int(counts["sequences"]), int(counts["tokens"]), cfg.rollout.max_new_tokens)
        lengths = mask.sum(-1)  # (N,)
        if world > 1:
            trainable = torch.ones_like(lengths, dtype=torch.bool)  # same micro-batch count on every rank (DDP all-reduce)
        else:
            trainable = lengths > 0
            if cfg.grpo.beta == 0 and not (self.moe and self.moe.aux_loss_coef > 0):
                trainable &= advantages != 0  # zero advantage, no KL, no router loss: exactly zero gradient
        rows = torch.nonzero(trainable).flatten()
        total_len = rollout.prompt_mask.sum(-1) + lengths
        rows = rows[torch.argsort(total_len[rows], stable=True)]  # length buckets: little padding
        grouped = self.prefix_grouping
        if grouped:  # micro-batches never mix prompts (row // G is the prompt); still length-sorted within one
            G = rollout.group_size
            micro = [c for p in range(N // G) for c in torch.split(rows[rows // G == p], cfg.optim.micro_batch_size) if len(c)]
        else:
            micro = [rows[i : i + cfg.optim.micro_batch_size] for i in range(0, len(rows), cfg.optim.micro_batch_size)]
        prompt_lengths = rollout.prompt_mask.sum(-1)  # (N,)
        trained_tokens = sum(int(lengths[idx].sum()) + int(prompt_lengths[idx[0]]) * (1 if grouped else len(idx)) for idx in micro)

        ref_logps = {}
        if cfg.grpo.beta > 0:
            policy = self.accelerator.unwrap_model(self.model)
            reference = self.ref_model if self.ref_model is not None else policy
            with torch.no_grad(), reference_context(reference):
                for k, idx in enumerate(micro):
                    ref_logps[k] = self._logprobs(reference, rollout, mask, idx, grouped)[0]

        totals = dict.fromkeys(("loss", "tokens", "clip_low_tokens", "clip_high_tokens", "kl_sum", "ratio_sum", "grad_norm"), 0.0)
        router = self.moe is not None
        aux_sum, load_sum = 0.0, None
        self.model.train()
        for _ in range(cfg.grpo.num_iterations):
            self._zero_grads()
            for k, idx in enumerate(micro):
                if router:
                    logp, c_mask, aux, load = self._moe_logprobs(rollout, mask, idx)  # (b, T), (b, T), scalar, (E,)
                    aux_sum += float(aux.detach())
                    load_sum = load if load_sum is None else load_sum + load
                else:
                    logp, c_mask = self._logprobs(self.model, rollout, mask, idx, grouped)  # (b, T), (b, T)
                width = c_mask.shape[1]
                loss, stats = policy_loss(
                    logp,
                    rollout.logprobs[idx, :width].to(logp.device),
                    advantages[idx].to(logp.device),
                    c_mask,
                    normalizer,
                    epsilon=cfg.grpo.epsilon,
                    epsilon_high=cfg.grpo.epsilon_high,
                    beta=cfg.grpo.beta,
                    ref_logp=ref_logps.get(k),
                    token_weights=self._importance_weights(rollout, idx, width),
                )
                if router and self.moe.aux_loss_coef > 0:  # mean over micro-batches (and processes) of the aux loss
                    loss = loss + self.moe.aux_loss_coef * aux / (len(micro) * world)
                # `loss` is this process's share of the global-batch loss; DDP averages gradients
                # over processes, so scaling by W makes the all-reduced gradient their sum.
                with accumulation_boundary(self.accelerator, self.model, last=k == len(micro) - 1):
                    self.accelerator.backward(loss * world)
                totals["loss"] += float(loss.detach())
                for key, value in stats.items():
                    totals[key] += value
            max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
            totals["grad_norm"] += float(grad_norm if grad_norm is not None else float("nan"))  # DeepSpeed: engine's norm
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer_steps += 1
        self.optimizer.zero_grad(set_to_none=True)  # free the gradients until the next update (peak memory)
        mu = cfg.grpo.num_iterations
        grad_norm = totals.pop("grad_norm") / mu  # already identical on every process
        totals = {k: v / mu for k, v in totals.items()}
        totals["trained_sequences"] = len(rows)
        totals["trained_tokens"] = trained_tokens  # tokens through forward+backward per optimizer step
        totals = self.collective.sum(totals)
        totals["grad_norm"] = grad_norm
        if router and load_sum is not None:
            passes = len(micro) * mu * self.collective.world
            load = torch.tensor(self.collective.gather_objects([load_sum.tolist()])).sum(0) / passes  # (E,)
            totals["moe"] = load_metrics(load, self.collective.sum({"aux": aux_sum})["aux"] / passes)
        return totals

    def _zero_grads(self) -> None:
        """Zero gradients that exist and allocate the missing ones as zeros: AdamW must step (decay
        its moments) even when no micro-batch ran, and skips parameters whose grad is None."""
        self.optimizer.zero_grad(set_to_none=False)
        if is_sharded(self.accelerator):  # FSDP/DeepSpeed own their gradient storage
            return
        for p in self.accelerator.unwrap_model(self.model).parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)

    def _importance_weights(self, rollout: RolloutBatch, idx: torch.Tensor, width: int) -> torch.Tensor | None:
        """min(pi_train / pi_sampler, cap) per token (b, T') when vLLM sampled and the correction is on."""
        vcfg = self.cfg.rollout.vllm
        if rollout.sampler_logprobs is None or not vcfg.importance_correction:
            return None
        delta = rollout.logprobs[idx, :width] - rollout.sampler_logprobs[idx, :width]  # (b, T')
        return delta.exp().clamp(max=vcfg.importance_cap).to(self.accelerator.device)

    @property
    def prefix_grouping(self) -> bool:
        # DDP expects one forward per backward and the router loss one batch of whole sequences;
        # the grouped path runs the model twice.
        return self.cfg.optim.prefix_grouping and self.accelerator.num_processes == 1 and self.moe is None

    def _moe_logprobs(self, rollout: RolloutBatch, mask: torch.Tensor, idx: torch.Tensor):
        """Policy log-probs (b, T'), loss mask (b, T'), router aux loss and per-expert load (E,)."""
        p_ids, p_mask, c_ids, c_mask = self._micro_inputs(rollout, mask, idx)
        logp, out, attention_mask = completion_logprobs(
            self.model, p_ids, p_mask, c_ids, c_mask, self.cfg.rollout.temperature, output_router_logits=True
        )
        load = expert_load(out.router_logits, attention_mask, self.moe.top_k)
        return logp, c_mask, out.aux_loss, load

    def _logprobs(self, model, rollout: RolloutBatch, mask: torch.Tensor, idx: torch.Tensor, grouped: bool):
        """Log-probs of the completions in rows `idx` under `model` (b, T'), and their loss mask (b, T')."""
        p_ids, p_mask, c_ids, c_mask = self._micro_inputs(rollout, mask, idx)
        T = self.cfg.rollout.temperature
        with gqa_attention(self.accelerator.unwrap_model(model)):  # CPU: shared KV heads, no repeat_kv copies to save
            if grouped:
                prompt = p_ids[0][p_mask[0].bool()]  # (Lp,) every row of idx shares it
                return grouped_completion_logprobs(model, prompt, c_ids, c_mask, T), c_mask
            return completion_logprobs(model, p_ids, p_mask, c_ids, c_mask, T), c_mask

    def _micro_inputs(self, rollout: RolloutBatch, mask: torch.Tensor, idx: torch.Tensor):
        """Slice rows `idx`, trimming left padding of prompts and right padding of completions."""
        device = self.accelerator.device
        p_mask = rollout.prompt_mask[idx]
        p_width = int(p_mask.sum(-1).max())
        c_mask = mask[idx]
        c_width = max(int(rollout.completion_mask[idx].sum(-1).max()), 1)
        return (
            rollout.prompt_ids[idx, -p_width:].to(device),  # (b, Lp')
            p_mask[:, -p_width:].to(device),  # (b, Lp')
            rollout.completion_ids[idx, :c_width].to(device),  # (b, T')
            c_mask[:, :c_width].to(device),  # (b, T')
        )

    # ------------------------------------------------------------------ metrics, traces, eval, checkpoints

    def _step_metrics(self, rows: "StepRows", stats) -> dict:
        G = rows.group_size
        total = rows.rewards
        lengths = rows.lengths.float()
        completion_tokens = rows.lengths.sum()
        completions, advantages = rows.completions, rows.advantages
        acc = rows.components[self.cfg.accuracy_reward_name]
        m = {
            "reward/mean": _nanmean(total),
            "reward/std": _nanstd(total),
            "accuracy": float((acc >= CORRECT).float().mean()),
            "format_rate": sum(is_well_formatted(c) for c in completions) / len(completions),
            "completions/mean_length": float(lengths.mean()),
            "completions/max_length": float(lengths.max()),
            "completions/min_length": float(lengths.min()),
            "completions/truncated_frac": float(rows.truncated.float().mean()),
            "groups/zero_std_frac": float((group_reward_std(total, G) == 0).float().mean()),
            "advantage/abs_mean": float(advantages.abs().mean()),
            "loss": stats["loss"],
            "clip/low_frac": stats["clip_low_tokens"] / max(stats["tokens"], 1),
            "clip/high_frac": stats["clip_high_tokens"] / max(stats["tokens"], 1),
            "ratio/mean": stats["ratio_sum"] / stats["tokens"] if stats["tokens"] else 1.0,
            "grad_norm": stats["grad_norm"],
            "lr": self.scheduler.get_last_lr()[0],
            "update/trained_sequences": stats["trained_sequences"],
            "tokens/generated": int(completion_tokens),
            "tokens/prompt": int(rows.prompt_lengths[::G].sum()),  # prefilled once per group
            "tokens/trained": stats["trained_tokens"],
        }
        m.update(stats.get("moe", {}))
        if rows.entropy_sums is not None:  # vLLM without recompute returns no entropies
            m["entropy"] = float(rows.entropy_sums.sum() / completion_tokens.clamp(min=1))
        m["flops/step"] = step_flops(
            self.num_parameters, m["tokens/prompt"], m["tokens/generated"], m["tokens/trained"],
            self.cfg.grpo.num_iterations, reference=self.cfg.grpo.beta > 0,
        )
        m["clip/region_frac"] = m["clip/low_frac"] + m["clip/high_frac"]
        if self.cfg.grpo.beta > 0:
            m["kl"] = stats["kl_sum"] / max(stats["tokens"], 1)
        for name, values in rows.components.items():
            m[f"rewards/{name}/mean"] = _nanmean(values)
            m[f"rewards/{name}/std"] = _nanstd(values)
            m[f"rewards/{name}/frac_none"] = float(torch.isnan(values).float().mean())
            m[f"time/reward/{name}"] = rows.reward_seconds[name]
            for key, value in rows.reward_metrics[name].items():
                m[f"rewards/{name}/{key}"] = float(value)
        return m

    def _write_traces(self, problems, prompt_texts, rows: "StepRows", analyses) -> None:
        if not self.is_main:
            return
        G = rows.group_size
        records = []
        for i, completion in enumerate(rows.completions):
            p = i // G
            comps = {name: (None if torch.isnan(v[i]) else float(v[i])) for name, v in rows.components.items()}
            total = rows.rewards[i]
            records.append(
                {
                    "step": self.step + 1,
                    "prompt_id": problems[p]["id"],
                    "group_index": i % G,
                    "prompt": prompt_texts[p],
                    "completion": completion,
                    "answer": problems[p]["answer"],
                    "rewards": comps,
                    "reward": None if torch.isnan(total) else float(total),
                    "correct": bool(rows.components[self.cfg.accuracy_reward_name][i] >= CORRECT),
                    "advantage": float(rows.advantages[i]),
                    "length": int(rows.lengths[i]),
                    "truncated": bool(rows.truncated[i]),
                    "extracted_answer": extract_answer(completion, self.answer_fallback),
                }
            )
            if analyses:
                a = analyses[i]
                records[-1].update(
                    reflections=[r.label for r in a.reflections],
                    revision=a.revision.kind if a.revision else None,
                    verified=bool(a.verifications),
                )
        self.traces_file.write(records)

    def run_eval(self) -> dict:
        with self._generation_engine():
            return self._run_eval()

    def _run_eval(self) -> dict:
        cfg = self.cfg
        metrics, records = evaluate(
            self.engine,
            self.tokenizer,
            self.data.held_out,
            cfg.prompt,
            self.accuracy,
            cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
            list(cfg.rollout.stop),
            cfg.eval.batch_size,
            self.step,
            n=cfg.eval.num_samples,
            ks=tuple(cfg.eval.k),
            temperature=cfg.eval.temperature,
            seed=cfg.seed,
            answer_fallback=self.answer_fallback,
            analyzer=self.analyzer if cfg.traces.analyze else None,
        )
        metrics["step"] = self.step
        self.eval_history.append(metrics)
        if self.is_main:
            self.eval_file.write([metrics])
            self.eval_traces_file.write(records)
            if cfg.report_to:
                self.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=self.step)
        self._print(
            f"[eval @ step {self.step}] accuracy {metrics['eval/accuracy']:.1%}  format {metrics['eval/format_rate']:.1%}  "
            f"mean length {metrics['eval/mean_length']:.0f} tokens  ({metrics['eval/num_problems']} held-out problems, "
            f"{metrics['eval/seconds']:.0f} s)"
        )
        return metrics

    def save(self) -> Path:
        path = ckpt.checkpoint_dir(self.run_dir, self.step)
        state_dict = gathered_state_dict(self.accelerator, self.model)  # collective under FSDP/ZeRO
        if self.is_main:
            path = ckpt.save_checkpoint(
                self.run_dir,
                self.step,
                self.accelerator.unwrap_model(self.model),
                self.tokenizer,
                self.optimizer,
                self.scheduler,
                self.generator,
                {"sampler": self.sampler.state_dict(), "base_model": self.cfg.model.name},
                keep=self.cfg.save_total_limit,
                state_dict=state_dict,
            )
        self.accelerator.wait_for_everyone()
        return path

    def _log(self, metrics: dict) -> None:
        if not self.is_main:
            return
        self.metrics_file.write([metrics])
        if self.cfg.report_to:
            self.accelerator.log({k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}, step=metrics["step"])

    def summary(self, last: dict, final_checkpoint: Path) -> dict:
        first_eval = self.eval_history[0] if self.eval_history else None
        last_eval = self.eval_history[-1] if self.eval_history else None
        out = {
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "model_parameters": self.num_parameters,
            "trainable_parameters": self.num_trainable_parameters,
            "final_checkpoint": str(final_checkpoint),
            "metrics": str(self.run_dir / "metrics.jsonl"),
            "traces": str(self.run_dir / "traces.jsonl"),
            "eval_before": first_eval,
            "eval_after": last_eval,
        }
        if first_eval and last_eval:
            self._print(
                f"\nheld-out accuracy: {first_eval['eval/accuracy']:.1%} (step {first_eval['step']}) -> "
                f"{last_eval['eval/accuracy']:.1%} (step {last_eval['step']});  format "
                f"{first_eval['eval/format_rate']:.1%} -> {last_eval['eval/format_rate']:.1%}"
            )
        self._print(
            f"metrics:     {out['metrics']}\ntraces:      {out['traces']}\ncheckpoint:  {final_checkpoint}\n"
            f"evaluation:  {self.run_dir / 'eval.jsonl'} (completions in eval_traces.jsonl)"
        )
        return out

    def close(self) -> None:
        if self.is_main:
            for f in (self.metrics_file, self.traces_file, self.eval_file, self.eval_traces_file):
                f.close()
            if self.cfg.report_to:
                self.accelerator.end_training()

    def _print(self, text: str) -> None:
        if not self.quiet and self.accelerator.is_main_process:
            print(text, flush=True)

    def _warn(self, text: str, bar) -> None:
        """Alarms: above the progress bar, or through logging when the run is quiet."""
        if not self.is_main:
            return
        if self.quiet:
            logging.getLogger("rl_reasoning").warning(text)
        else:
            bar.write(f"warning: {text}")


@dataclass
class StepRows:
    """Per-completion values of one step's whole generation batch (all processes), in row order:
    row i is completion i % G of prompt i // G."""

    completions: list[str]
    rewards: torch.Tensor  # (B*G,) weighted total, NaN = no reward
    components: dict[str, torch.Tensor]  # name -> (B*G,)
    lengths: torch.Tensor  # (B*G,) completion tokens
    prompt_lengths: torch.Tensor  # (B*G,) prompt tokens
    truncated: torch.Tensor  # (B*G,) bool
    entropy_sums: torch.Tensor | None  # (B*G,) summed token entropy; None when the sampler gave none
    group_size: int
    reward_seconds: dict[str, float]  # slowest process
    reward_metrics: dict[str, dict]  # averaged over processes
    advantages: torch.Tensor | None = None  # (B*G,)


def rollout_seed(seed: int, step: int) -> int:
    """The sampling seed of training step `step` (0-based): a function of the run seed and the
    step only, so every process, and a resumed run, draws the same noise for the same rows."""
    return (seed * 1_000_003 + step * 7_919 + 1) % (2**63)


def step_flops(n_params: int, prompt_tokens: int, generated_tokens: int, trained_tokens: int, mu: int, reference: bool) -> float:
    """Model FLOPs of one step (Kaplan et al.'s 2N per forward token, 6N per trained token; attention
    ignored): prefill + decode, mu forward/backward passes, and a reference forward when beta > 0."""
    return 2.0 * n_params * (prompt_tokens + generated_tokens + (trained_tokens if reference else 0)) + 6.0 * n_params * trained_tokens * mu


def _nanmean(x: torch.Tensor) -> float:
    v = x[~torch.isnan(x)]
    return float(v.mean()) if v.numel() else float("nan")


def _nanstd(x: torch.Tensor) -> float:
    v = x[~torch.isnan(x)]
    return float(v.std()) if v.numel() > 1 else 0.0


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _summary_line(m: dict) -> str:
    return (
        f"step {m['step']:>4}  reward {m['reward/mean']:.3f}±{m['reward/std']:.3f}  acc {m['accuracy']:.2f}  "
        f"fmt {m['format_rate']:.2f}  len {m['completions/mean_length']:.0f}  trunc {m['completions/truncated_frac']:.2f}  "
        f"zero-std {m['groups/zero_std_frac']:.2f}  loss {m['loss']:+.4f}  |g| {m['grad_norm']:.3f}  "
        f"gen {m['time/generation']:.1f}s rew {m['time/reward']:.1f}s upd {m['time/update']:.1f}s  "
        f"{m['throughput/generated_tokens_per_s']:.0f} tok/s"
    )


def run(cfg: Config, recipe_name: str = "run", quiet: bool = False) -> dict:
    """Build a trainer, train, and return the run summary."""
    return GRPOTrainer(cfg, recipe_name=recipe_name, quiet=quiet).train()
