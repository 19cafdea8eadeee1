"""The GRPO training loop: prompts -> rollout -> rewards -> advantages -> update -> metrics and traces -> checkpoint.

One step draws B = `prompts_per_step` problems (tasks/), renders their prompts (prompts.py),
samples G completions for each (engine.py: our engine in rollout.py, or vLLM in
vllm_rollout.py), scores them (reward_runner.py), turns the rewards into group-relative
advantages (grpo.py) and runs mu = `grpo.num_iterations` optimizer steps on the batch
(update.py). With `distill.teacher` a frozen teacher scores the sampled tokens and the advantages
become per-token (on-policy distillation, teacher.py and grpo.distillation_advantages).
With `grpo.dynamic_sampling` (DAPO) the sampling and scoring repeat on new
prompts until B groups carry signal (`_refill`); everything after it sees only the kept batch.
The main process writes the step's metrics (metrics.py) and traces (run_files.py);
held-out evaluations go through evaluation.py and checkpoints through checkpoint.py.

Under `accelerate launch` every process draws the same global batch, samples and scores its own
slice of prompts, and advantages, metrics and traces are computed on values gathered from all
processes (distributed.py), so the run equals a single-process run on the same batch (dynamic
sampling decides on gathered values too, then re-splits the kept groups over the processes).
Departures from the papers are stated where they happen: grpo.py (the loss), update.py (what
the update skips or drops), rollout.py (sampling).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .adapters import apply_lora
from .config import Config
from .distributed import Collective
from .engine import RolloutBatch, concat_rollouts, select_groups
from .errors import ConfigError, UserError
from .evaluation import EvalSettings, evaluate, problem_columns
from .grpo import AdaptiveEntropy, distillation_advantages, group_advantages, zero_variance_groups
from .jsonl import read_records
from .logprobs import recompute_logprobs
from .metrics import StepRows, distill_metrics, distill_sums, gather_rows, step_flops, step_metrics, summary_line, timing_metrics
from .models import eos_token_ids, load_model
from .moe import moe_spec
from .multiturn import COLUMNS as MULTI_TURN_COLUMNS
from .multiturn import MultiTurnEngine, build_environment, build_toolbox, episode_columns, episode_metrics, multi_turn, prompt_with_tools
from .prompts import encode_prompt, render_prompt
from .reward_runner import CORRECT, RewardResult, RewardRunner, accuracy_runner, answer_fallback
from .rollout import RolloutEngine
from .run_files import RunFiles, trace_records
from .runtime import configure_cpu, quiet_library_progress_bars, seed_everything
from .sharded import check_engine_matches_launch, configure_deepspeed, full_parameters_for_generation, gathered_state_dict, is_sharded
from .tasks import PromptSampler, load_task
from .teacher import load_teacher
from .traces import AlarmMonitor, Analyzer, step_statistics
from .traces.schema import metrics_problem
from .untrusted import terminal_safe
from .update import PolicyUpdate, dropped_rows, loss_mask


class GRPOTrainer:
    def __init__(self, cfg: Config, recipe_name: str = "run", quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.run_dir = _run_dir(cfg, recipe_name)
        quiet_library_progress_bars()
        configure_cpu(cfg.threads)
        self._build_accelerator()
        seed_everything(cfg.seed)
        # Everything that can fail on bad input is checked before the model is loaded.
        self._build_rewards_and_data()
        self._build_policy()
        self.teacher = load_teacher(cfg, self.accelerator.device, self.tokenizer)  # None without distill.teacher
        self._build_engine()
        self.generator = torch.Generator(device=self.accelerator.device).manual_seed(cfg.seed)  # sampling happens on the model's device
        self.step = 0
        self.eval_history: list[dict] = []
        self.files = RunFiles(self.run_dir, self.is_main)
        self.resumed_from = self._restore()
        self.files.open(cfg)
        if cfg.report_to and self.is_main:
            self.accelerator.init_trackers("rl_reasoning", config=_flat(cfg.to_dict()))

    # ------------------------------------------------------------------ set-up, in order

    def _build_accelerator(self) -> None:
        """The accelerate state for this launch, and every launch-level check that needs it."""
        from accelerate import Accelerator

        cfg = self.cfg
        for tracker in cfg.report_to:
            if tracker == "tensorboard" and not _importable("tensorboard") and not _importable("tensorboardX"):
                raise ConfigError("report_to: tensorboard is not installed (pip install tensorboard)")
            if tracker == "wandb" and not _importable("wandb"):
                raise ConfigError("report_to: wandb is not installed (pip install wandb)")
        try:
            self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=cfg.report_to or None, project_dir=str(self.run_dir))
        except ImportError as e:  # e.g. a DeepSpeed config without deepspeed installed
            raise UserError(f"accelerate: {e}") from None
        self.collective = Collective(self.accelerator)
        self.is_main = self.accelerator.is_main_process
        check_engine_matches_launch(self.accelerator)
        fsdp = getattr(self.accelerator.state, "fsdp_plugin", None)
        if fsdp is not None and getattr(fsdp, "fsdp_version", 2) != 2:
            raise ConfigError("fsdp_config.fsdp_version: use 2 (FSDP2); generation needs its unshard()")
        if is_sharded(self.accelerator) and cfg.resume is not False:
            raise ConfigError("resume: FSDP/DeepSpeed checkpoints hold weights only (sharded optimizer state is not saved); "
                              "start a new run with model.name=<checkpoint dir>, or train with DDP")
        if cfg.prompts_per_step % self.collective.world:
            raise ConfigError(f"prompts_per_step: {cfg.prompts_per_step} prompts cannot be split over {self.collective.world} "
                              "processes; use a multiple of the process count")

    def _build_rewards_and_data(self) -> None:
        cfg = self.cfg
        self.rewards = RewardRunner(cfg.rewards, cfg.weights())
        self.accuracy = accuracy_runner(cfg)
        self.answer_fallback = answer_fallback(self.accuracy)
        self.toolbox = build_toolbox(cfg)  # a missing tool is an error here, before the model loads
        self.environment = build_environment(cfg, self.accuracy)
        self.prompt = prompt_with_tools(cfg.prompt, self.toolbox, cfg.rollout.describe_tools)  # what every prompt is rendered with
        self.data = load_task(cfg.data)
        first = (self.data.train or self.data.held_out or [{}])[0]
        columns = [k for k in first if k != "id"]
        if self.toolbox or self.environment:
            if clash := sorted(set(columns) & set(MULTI_TURN_COLUMNS)):
                raise ConfigError(f"data: column(s) {', '.join(clash)} would be overwritten by the multi-turn rollout's own; rename them")
            columns += list(MULTI_TURN_COLUMNS)
        self.rewards.check_columns(columns, "the data")
        self.accuracy.check_columns(columns, "the data")
        self.sampler = PromptSampler(self.data, cfg.seed)
        self.analyzer = Analyzer(cfg.traces.reflection_markers, list(cfg.traces.extra_reflection_markers))
        self.alarms = AlarmMonitor(cfg.traces.alarms)

    def _build_policy(self) -> None:
        """Policy (with LoRA adapters if asked), frozen reference when beta > 0, optimizer, scheduler, the update."""
        from transformers import get_scheduler

        cfg = self.cfg
        loaded = load_model(cfg.model.name, self.accelerator.device, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.cache_dir)
        self.tokenizer, self.model_source = loaded.tokenizer, loaded.source
        model = loaded.model
        self.num_parameters = sum(p.numel() for p in model.parameters())
        model.config.use_cache = False
        moe = moe_spec(model, cfg.model.router_aux_loss_coef)
        self.ref_model = None
        if cfg.grpo.beta > 0 and cfg.lora.r == 0:  # with LoRA the reference is the policy with adapters off
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        if cfg.lora.r > 0:
            model = apply_lora(model, cfg.lora)
        self.num_trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.optim.lr, betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2), weight_decay=cfg.optim.weight_decay,
        )
        cosine = cfg.optim.scheduler == "cosine"
        scheduler = get_scheduler(  # not prepared: accelerate would step it once per process
            "cosine" if cosine else "constant_with_warmup", optimizer, num_warmup_steps=cfg.optim.warmup_steps,
            **({"num_training_steps": cfg.max_steps * cfg.grpo.num_iterations} if cosine else {}),
        )
        configure_deepspeed(self.accelerator, cfg.optim.micro_batch_size, cfg.optim.max_grad_norm)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        self.update = PolicyUpdate(cfg, self.accelerator, self.model, self.optimizer, self.scheduler, self.collective, moe, self.ref_model)
        g = cfg.grpo
        self.adaptive_entropy = AdaptiveEntropy(g.entropy_coef, g.entropy_target, g.entropy_coef_delta, g.entropy_coef_min,
                                                g.entropy_coef_max) if g.use_adaptive_entropy else None

    def _build_engine(self) -> None:
        """The generation engine: ours on the policy itself, or a colocated vLLM engine kept in sync."""
        cfg = self.cfg
        policy = self.accelerator.unwrap_model(self.model)
        eos = eos_token_ids(policy, self.tokenizer)
        self.synced_at = 0  # optimizer step whose weights the vLLM engine holds
        if cfg.rollout.backend == "vllm":
            from .vllm_rollout import VLLMRolloutEngine

            self.engine = VLLMRolloutEngine(
                self.model_source, self.tokenizer, eos, self.tokenizer.pad_token_id, cfg.rollout.vllm,
                max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0), cfg.seed, next(policy.parameters()).dtype,
            )
            self._print(f"vLLM engine started in {self.engine.startup_seconds:.1f} s")
        else:
            self.engine = RolloutEngine(policy, self.tokenizer, eos, self.tokenizer.pad_token_id)
            self.engine = multi_turn(cfg, self.engine, self.tokenizer, eos, self.toolbox, self.environment)  # tools, environments

    def _entropy_coef(self, rollout: RolloutBatch, mask: torch.Tensor) -> float:
        """The entropy bonus's coefficient for this step: grpo.entropy_coef, or with
        use_adaptive_entropy the controller's, gated on the mean sampling entropy of the batch's
        trained tokens (every process's)."""
        if self.adaptive_entropy is None:
            return self.cfg.grpo.entropy_coef
        sums = self.collective.sum({"entropy": float((rollout.entropies * mask).sum()), "tokens": float(mask.sum())})
        if sums["tokens"] == 0:  # nothing to train (every group dropped): the controller waits
            return 0.0
        return self.adaptive_entropy.for_step(sums["entropy"] / sums["tokens"])

    def _restore(self) -> Path | None:
        """Resume from a checkpoint when asked: weights, optimizer, scheduler, RNG, data position."""
        resume_from = ckpt.find_resume_checkpoint(self.cfg.resume, self.run_dir)
        if resume_from is None:
            return None
        state = ckpt.load_training_state(resume_from, self.accelerator.unwrap_model(self.model), self.optimizer, self.scheduler, self.generator)
        self.step = state["step"]
        self.sampler.load_state_dict(state["sampler"])
        if self.adaptive_entropy is not None and "entropy_coef" in state:
            self.adaptive_entropy.coef = state["entropy_coef"]
        self.files.truncate_after(self.step)
        if self.is_main:
            ckpt.set_aside_newer_checkpoints(self.run_dir, self.step)
        self.eval_history = list(read_records(self.run_dir / "eval.jsonl", check=metrics_problem))
        self._print(f"resumed from {resume_from} at step {self.step}")
        if self._uses_vllm:
            self._sync_vllm()
        return resume_from

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        """Train to max_steps, then the final evaluation, checkpoint and summary.

        SIGINT (Ctrl-C) / SIGTERM: the step in progress is finished, with the evaluation and checkpoint
        due after it, a checkpoint of that step is written, one line on stderr gives the command that
        continues the run, and `ckpt.Interrupted` exits 130 / 143. Every process stops after the same
        step (the request is shared between steps), so no collective is left waiting. A second signal
        aborts at once (ckpt.StopSignals); resume then starts from the last checkpoint. docs/resume.md.
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        with ckpt.StopSignals(self.run_dir, self.step, tell=self.is_main) as signals:

            def stop_requested() -> int:  # the signal any process received, 0 if none; the same on every process
                return int(self.collective.max({"signal": float(signals.requested)})["signal"])

            # (a run resumed from a step-0 checkpoint has its step-0 evaluation already)
            if cfg.eval.at_start and self.step == 0 and self.data.held_out and not self.eval_history:
                self.run_eval()
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="GRPO", unit="step", disable=self.quiet or not self.is_main, dynamic_ncols=True)
            signals.newline_first = not bar.disable
            last, saved_at, warned_exhausted = {}, None, False
            try:
                stop = stop_requested()
                while self.step < cfg.max_steps and not stop:
                    signals.step = self.step + 1
                    last = self.train_step()
                    self.step += 1
                    for alarm in last.get("alarms", []):
                        self._warn(f"step {self.step}: {alarm}", bar)
                    if not warned_exhausted and last.get("dynamic_sampling/kept_informative_groups", cfg.prompts_per_step) < cfg.prompts_per_step:
                        warned_exhausted = True  # once per run: dynamic_sampling/kept_informative_groups has every step
                        self._warn(f"step {self.step}: {refill_ran_out(last, cfg)}", bar)
                    bar.update(1)
                    bar.set_postfix(reward=f"{last['reward/mean']:.3f}", acc=f"{last['accuracy']:.2f}", fmt=f"{last['format_rate']:.2f}",
                                    len=f"{last['completions/mean_length']:.0f}", s=f"{last['time/step']:.1f}")
                    if self.step % cfg.log_every == 0 and not self.quiet and self.is_main:
                        bar.write(summary_line(last))
                    if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.max_steps and self.data.held_out:
                        self.run_eval()
                    if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                        self.save()
                        saved_at = self.step
                    stop = stop_requested()
            finally:
                bar.close()
            if stop:
                checkpoint = ckpt.checkpoint_dir(self.run_dir, self.step) if saved_at == self.step else self.save()
                signals.report_stop(stop, self.step, checkpoint)
                self.close()
                raise ckpt.Interrupted(stop)
            signals.step = None  # the steps are done: a signal from here on lets the run finish, a second one aborts
            if cfg.eval.at_end and self.data.held_out and (not self.eval_history or self.eval_history[-1]["step"] != self.step):
                self.run_eval()
            summary = self.summary(last, self.save())
            if self.collective.world > 1:
                checksums = self.collective.parameter_checksums(self.accelerator.unwrap_model(self.model))
                summary["processes"] = self.collective.world
                summary["replica_checksums"] = checksums  # one per process; equal when the replicas agree
                if len(set(checksums)) > 1:
                    self._print(f"warning: model replicas differ across processes (checksums {checksums})")
            self.files.summary(summary)
            self.close()
        return summary

    def train_step(self) -> dict:
        """One step (self.step -> self.step + 1); writes its traces and metrics and returns the metrics."""
        cfg, G, shard = self.cfg, self.cfg.rollout.num_generations, self.collective.shard
        t_start = time.perf_counter()
        seconds = {"generation": 0.0, "old_logprobs": 0.0, "reward": 0.0}  # summed over generation rounds

        # prompts, rollout, rewards (grpo.dynamic_sampling: more rounds until B groups carry signal)
        batch = self._sample_and_score(0, seconds)
        refill = self._refill(batch, seconds) if cfg.grpo.dynamic_sampling else None
        if refill is not None:
            batch = refill.batch
        problems, prompt_texts, rollout, rewards = batch.problems, batch.prompt_texts, batch.rollout, batch.rewards
        sampler_stats = self._sampler_mismatch(rollout) if self._recomputes else {}
        t_rew = time.perf_counter()

        # advantages (on the global batch) and the update (on this process's rows)
        rows = gather_rows(self.collective, rollout, rewards, batch.completions, has_entropy=not self._uses_vllm or self._recomputes)
        rows.advantages = group_advantages(rows.rewards, G, cfg.grpo.scale_rewards)  # (B*G,)
        mine_rows = shard.row_slice(len(rows.advantages))
        dropped = dropped_rows(rows.zero_variance, G, cfg.grpo.drop_zero_variance_groups)[mine_rows]  # (N,)
        mask = loss_mask(rollout.sampled_mask, rewards.total, rollout.truncated, dropped, cfg.grpo.mask_truncated_completions)  # (N, T)
        advantages = rows.advantages[mine_rows]  # (N,)
        teacher_sums = None
        if self.teacher is not None:  # on-policy distillation: per-token advantages (N, T)
            t_teacher = time.perf_counter()
            teacher_logp, teacher_tokens = self.teacher.logprobs(rollout, mask)  # (N, T)
            advantages = distillation_advantages(advantages, rollout.logprobs, teacher_logp, mask, cfg.distill.coef, cfg.distill.task_coef)
            teacher_sums = self.collective.sum({**distill_sums(rollout.logprobs, teacher_logp, mask), "forwarded": teacher_tokens})
            seconds["teacher"] = time.perf_counter() - t_teacher
        entropy_coef = self._entropy_coef(rollout, mask)
        update_stats = self.update(rollout, advantages, mask, dropped, entropy_coef)
        if self._uses_vllm:
            sampler_stats["vllm/weight_staleness"] = self.update.optimizer_steps - cfg.grpo.num_iterations - self.synced_at
            if (self.step + 1) % cfg.rollout.vllm.sync_every == 0:
                sampler_stats["vllm/sync_seconds"] = self._sync_vllm()
        t_upd = time.perf_counter()

        # metrics, traces
        correct = rows.components[cfg.accuracy_reward_name] >= CORRECT  # (B*G,)
        analyses = self._analyze(rows, problems, correct) if self.is_main else []
        metrics = step_metrics(rows, update_stats, cfg.accuracy_reward_name, self.scheduler.get_last_lr()[0],
                               self.num_parameters, cfg.grpo.num_iterations, cfg.grpo.beta)
        metrics.update(self.collective.mean_of_dicts({"s": sampler_stats})["s"] if sampler_stats else {})
        metrics.update(step_statistics(analyses))
        metrics.update(episode_metrics(rows.episodes, correct))
        if cfg.grpo.entropy_coef > 0 or self.adaptive_entropy is not None:
            metrics["entropy/coef"] = entropy_coef
        if teacher_sums is not None:
            metrics.update(distill_metrics(teacher_sums))
            metrics["flops/step"] += 2.0 * self.teacher.num_parameters * teacher_sums["forwarded"]  # the teacher's forward
        seconds.update(update=t_upd - t_rew - seconds.get("teacher", 0.0), step=t_upd - t_start)
        if not self._recomputes:
            del seconds["old_logprobs"]
        seconds = self.collective.max(seconds)
        metrics.update(timing_metrics(seconds, rows))
        if refill is not None:
            metrics.update(refill.metrics(metrics, seconds, self.num_parameters))
        if cfg.traces.analyze:
            metrics["alarms"] = [f"{a.name}: {a.message}" for a in self.alarms.update({**metrics, "step": self.step + 1})]
        metrics["step"] = self.step + 1
        if self.is_main:
            traces = trace_records(self.step + 1, problems, prompt_texts, rows, analyses, cfg.accuracy_reward_name, self.answer_fallback)
            self.files.step(metrics, traces)
            self._track(metrics, self.step + 1)
        return metrics

    def _sample_and_score(self, generation_round: int, seconds: dict) -> Sampled:
        """One generation round: the next B prompts (the global batch, identical on every process),
        G completions of this process's slice of them, and their rewards. Adds its time to `seconds`."""
        cfg, G, shard = self.cfg, self.cfg.rollout.num_generations, self.collective.shard
        t_start = time.perf_counter()
        problems = self.sampler.next_batch(cfg.prompts_per_step)
        prompt_texts = [render_prompt(self.tokenizer, p["question"], self.prompt) for p in problems]
        mine = shard.prompt_slice(len(problems))  # this process's prompts, with all G of their completions
        prompt_ids = [encode_prompt(self.tokenizer, t, cfg.prompt.template) for t in prompt_texts[mine]]

        # rollout
        self.generator.manual_seed(rollout_seed(cfg.seed, self.step, generation_round))
        n_local = len(prompt_ids) * G
        with self._generation_engine() as engine:
            extra = {"problems": problems[mine]} if isinstance(engine, MultiTurnEngine) else {}
            rollout = engine.generate(prompt_ids, cfg.rollout, self.generator, shard=(shard.rank * n_local, len(problems) * G), **extra)
        t_gen = time.perf_counter()
        if self._recomputes:
            self._recompute_old_logprobs(rollout)
        t_gen_end = time.perf_counter()

        # rewards
        completions = [cfg.prompt.prefill + t for t in rollout.texts]  # what the rewards judge
        sampled = rollout.sampled_mask.bool()  # (N, Lc): the policy's own tokens (tool results left out)
        completion_ids = [ids[keep].tolist() for ids, keep in zip(rollout.completion_ids, sampled)]
        columns = {**problem_columns(problems[mine], G), **episode_columns(rollout)}
        rewards = self.rewards(completions, columns, [t for t in prompt_texts[mine] for _ in range(G)],
                               self.step + 1, completion_ids=completion_ids)
        seconds["generation"] += t_gen - t_start
        seconds["old_logprobs"] += t_gen_end - t_gen
        seconds["reward"] += time.perf_counter() - t_gen_end
        return Sampled(problems, prompt_texts, rollout, rewards, completions)

    # ------------------------------------------------------------------ dynamic sampling (DAPO)

    def _refill(self, first: Sampled, seconds: dict) -> Refill:
        """`grpo.dynamic_sampling`: sample and score more rounds of B prompts until B informative
        groups (grpo.dynamic_sampling_metric not constant) are in hand or `max_num_gen_batches`
        rounds ran, then keep B groups (`keep_groups`). The decision is taken on values gathered
        from every process, so all take it alike; the kept batch is then re-split over them."""
        cfg, B = self.cfg, self.cfg.prompts_per_step
        rounds, informative = [first], [self._informative_groups(first)]  # (B,) bool per round
        while int(sum(m.sum() for m in informative)) < B and len(rounds) < cfg.grpo.max_num_gen_batches:
            rounds.append(self._sample_and_score(len(rounds), seconds))
            informative.append(self._informative_groups(rounds[-1]))
        t_start = time.perf_counter()
        flags = torch.cat(informative)  # (R*B,) in draw order
        keep = keep_groups(flags, B)
        batch = first if len(rounds) == 1 else self._kept_batch(rounds, keep)
        sampled = self.collective.sum({  # every round's tokens, for throughput and FLOPs
            "generated": sum(float(s.rollout.sampled_mask.sum()) for s in rounds),
            "prompt_rows": sum(float(s.rollout.prompt_mask.sum()) for s in rounds),
            "prompt_groups": sum(float(s.rollout.prompt_mask[:: cfg.rollout.num_generations].sum()) for s in rounds),
        })
        seconds["generation"] += time.perf_counter() - t_start
        return Refill(batch, rounds=len(rounds), informative=int(flags.sum()), kept_informative=int(flags[keep].sum()),
                      sampled_groups=len(flags), **{f"{k}_tokens": int(v) for k, v in sampled.items()})

    def _informative_groups(self, sampled: Sampled) -> torch.Tensor:
        """(B,) True where a group's `dynamic_sampling_metric` values (gathered: the global batch) are not all equal."""
        cfg = self.cfg
        values = sampled.rewards.total if cfg.grpo.dynamic_sampling_metric == "reward" else sampled.rewards.components[cfg.accuracy_reward_name]
        return ~zero_variance_groups(self.collective.gather(values), cfg.rollout.num_generations)

    def _kept_batch(self, rounds: list[Sampled], keep: list[int]) -> Sampled:
        """Groups `keep` (indices into the rounds' prompts, in draw order) as this process's batch.
        Every process gathers every round's rows and takes its own slice of the kept groups, so the
        split of the kept batch over processes is the usual contiguous one. Reward seconds are
        summed over the rounds; what a reward reports about its batch is averaged over them."""
        c, G, first = self.collective, self.cfg.rollout.num_generations, rounds[0].rewards
        mine = keep[c.shard.prompt_slice(len(keep))]  # this process's kept groups
        rows = torch.tensor([g * G + j for g in mine for j in range(G)], dtype=torch.long)
        everything = concat_rollouts([r for s in rounds for r in c.gather_objects([s.rollout])], self.tokenizer.pad_token_id)
        rewards = RewardResult(
            total=torch.cat([c.gather(s.rewards.total) for s in rounds])[rows],
            components={name: torch.cat([c.gather(s.rewards.components[name]) for s in rounds])[rows] for name in first.components},
            seconds={name: sum(s.rewards.seconds[name] for s in rounds) for name in first.seconds},
            metrics={name: {k: sum(s.rewards.metrics[name][k] for s in rounds) / len(rounds) for k in m}
                     for name, m in first.metrics.items()},
        )
        completions = [t for s in rounds for t in c.gather_objects(s.completions)]
        problems = [p for s in rounds for p in s.problems]
        prompt_texts = [t for s in rounds for t in s.prompt_texts]
        return Sampled([problems[g] for g in keep], [prompt_texts[g] for g in keep], select_groups(everything, mine), rewards,
                       [completions[i] for i in rows.tolist()])

    def _analyze(self, rows: StepRows, problems: list[dict], correct: torch.Tensor) -> list:
        """Self-correction analysis of every completion (empty when traces.analyze is off)."""
        if not self.cfg.traces.analyze:
            return []
        G = rows.group_size
        return [self.analyzer(text, str(problems[i // G]["answer"]), bool(correct[i]), int(rows.lengths[i]))
                for i, text in enumerate(rows.completions)]

    # ------------------------------------------------------------------ generation engines

    @property
    def _uses_vllm(self) -> bool:
        return self.cfg.rollout.backend == "vllm"

    @property
    def _recomputes(self) -> bool:
        return self._uses_vllm and self.cfg.rollout.vllm.recompute_logprobs

    @contextlib.contextmanager
    def _generation_engine(self):
        """The engine to sample with: vLLM as is, or ours on the full-parameter policy (sharded.py)."""
        if self._uses_vllm:
            yield self.engine
            return
        with full_parameters_for_generation(self.accelerator, self.model) as policy:
            self.engine.model = policy
            yield self.engine

    def _sync_vllm(self) -> float:
        """Push the policy's weights (adapters merged) into the vLLM engine; returns seconds taken."""
        from .vllm_rollout import policy_weights

        seconds = self.engine.sync_weights(policy_weights(self.accelerator.unwrap_model(self.model)))
        self.synced_at = self.update.optimizer_steps
        return seconds

    def _recompute_old_logprobs(self, rollout: RolloutBatch) -> None:
        """Completions sampled by vLLM: the policy's own log-probs and entropies replace vLLM's
        (kept as `sampler_logprobs` for the importance correction)."""
        cfg = self.cfg
        rollout.sampler_logprobs = rollout.logprobs  # (N, Lc)
        rollout.logprobs, rollout.entropies = recompute_logprobs(
            self.accelerator.unwrap_model(self.model), rollout, cfg.optim.micro_batch_size, cfg.rollout.temperature, self.accelerator.device
        )

    def _sampler_mismatch(self, rollout: RolloutBatch) -> dict:
        """vllm/* metrics of the gap between the recomputed log-probs and vLLM's, on the trained batch."""
        from .vllm_rollout import sampler_mismatch_metrics

        return sampler_mismatch_metrics(rollout.logprobs, rollout.sampler_logprobs, rollout.completion_mask, self.cfg.rollout.vllm.importance_cap)

    # ------------------------------------------------------------------ evaluation, checkpoints, summary

    def run_eval(self) -> dict:
        """Score the policy on the held-out problems (greedy, and sampled when eval.num_samples > 0)."""
        cfg = self.cfg
        with self._generation_engine() as engine:
            metrics, records = evaluate(engine, self.tokenizer, self.data.held_out, self.prompt, self.accuracy, EvalSettings.from_config(cfg),
                                        self.step, analyzer=self.analyzer if cfg.traces.analyze else None)
        metrics["step"] = self.step
        self.eval_history.append(metrics)
        if self.is_main:
            self.files.evaluation(metrics, records)
            self._track(metrics, self.step)
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
                self.run_dir, self.step, self.accelerator.unwrap_model(self.model), self.tokenizer, self.optimizer, self.scheduler,
                self.generator, {"sampler": self.sampler.state_dict(), "base_model": self.cfg.model.name,
                                 **({"entropy_coef": self.adaptive_entropy.coef} if self.adaptive_entropy is not None else {})},
                keep=self.cfg.save_total_limit, state_dict=state_dict,
            )
        self.accelerator.wait_for_everyone()
        return path

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
        self.files.close()
        if self.toolbox is not None:
            self.toolbox.close()
        if self.is_main and self.cfg.report_to:
            self.accelerator.end_training()

    def _track(self, metrics: dict, step: int) -> None:
        """Numbers to tensorboard / wandb when `report_to` asks for them."""
        if self.cfg.report_to:
            self.accelerator.log({k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}, step=step)

    def _print(self, text: str) -> None:
        if not self.quiet and self.is_main:
            print(terminal_safe(text), flush=True)

    def _warn(self, text: str, bar) -> None:
        """Alarms: above the progress bar, or through logging when the run is quiet."""
        if not self.is_main:
            return
        text = terminal_safe(text)
        if self.quiet:
            logging.getLogger("rl_reasoning").warning(text)
        else:
            bar.write(f"warning: {text}")


@dataclass
class Sampled:
    """A generation batch: the global prompts, and this process's completions of them with their rewards."""

    problems: list[dict]  # (P,) the global batch, identical on every process
    prompt_texts: list[str]  # (P,)
    rollout: RolloutBatch  # this process's rows: its slice of the prompts, G completions each
    rewards: RewardResult  # of this process's rows
    completions: list[str]  # this process's rows as the rewards judged them (prefill + text)


@dataclass
class Refill:
    """What dynamic sampling did in one step: the kept batch and the counts behind its metrics."""

    batch: Sampled  # B groups
    rounds: int  # generation rounds run, the first included (verl's num_gen_batches)
    informative: int  # informative groups among the sampled ones, surplus included
    kept_informative: int  # informative groups in the kept batch (< B: the rounds ran out)
    sampled_groups: int  # rounds * B
    generated_tokens: int  # over every round and process
    prompt_rows_tokens: int  # prompt tokens summed over every sampled row
    prompt_groups_tokens: int  # prompt tokens prefilled, once per sampled group

    def metrics(self, so_far: dict, seconds: dict, num_parameters: int) -> dict:
        """dynamic_sampling/*, and throughput/* and flops/step recounted over every round (the
        other metrics, tokens/* included, describe the kept batch). `so_far`: the step's metrics."""
        unkept = (self.prompt_groups_tokens - so_far["tokens/prompt"]) + (self.generated_tokens - so_far["tokens/generated"])
        return {
            "dynamic_sampling/rounds": self.rounds,
            "dynamic_sampling/sampled_groups": self.sampled_groups,
            "dynamic_sampling/informative_groups": self.informative,
            "dynamic_sampling/kept_informative_groups": self.kept_informative,
            "dynamic_sampling/informative_frac": self.informative / self.sampled_groups,
            "dynamic_sampling/generated_tokens": self.generated_tokens,
            "throughput/generated_tokens_per_s": self.generated_tokens / max(seconds["generation"], 1e-9),
            "throughput/tokens_per_s": (self.generated_tokens + self.prompt_rows_tokens) / max(seconds["step"], 1e-9),
            "flops/step": so_far["flops/step"] + step_flops(num_parameters, unkept, 0, 0, 1, reference=False),
        }


def refill_ran_out(metrics: dict, cfg: Config) -> str:
    """The warning of the first step whose dynamic sampling found too few informative groups."""
    return (f"dynamic sampling found {metrics['dynamic_sampling/kept_informative_groups']} informative groups of {cfg.prompts_per_step} "
            f"in {metrics['dynamic_sampling/rounds']} rounds (grpo.max_num_gen_batches); groups whose {cfg.grpo.dynamic_sampling_metric} "
            "is constant filled the batch (warned once; dynamic_sampling/kept_informative_groups in metrics.jsonl has every step)")


def keep_groups(informative: torch.Tensor, size: int) -> list[int]:
    """Dynamic sampling's choice among a step's sampled groups ((R*B,) bool, True = informative,
    in draw order): the first `size` informative groups, and when fewer were found, the earliest
    uninformative ones to make up `size`. Returned in draw order."""
    order = torch.cat([torch.nonzero(informative).flatten(), torch.nonzero(~informative).flatten()])
    return sorted(order[:size].tolist())


def rollout_seed(seed: int, step: int, generation_round: int = 0) -> int:
    """The sampling seed of training step `step` (0-based), generation round `generation_round`
    (0 unless dynamic sampling refills): a function of the run seed, the step and the round only,
    so every process, and a resumed run, draws the same noise for the same rows. Refill rounds
    hash (step seed, round) with splitmix64, so their seeds practically never meet another step's."""
    base = (seed * 1_000_003 + step * 7_919 + 1) % (2**63)
    if generation_round == 0:
        return base
    z = (base + generation_round * 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % (2**63)


def _run_dir(cfg: Config, recipe_name: str) -> Path:
    """The run directory, checked against `resume` before anything is loaded."""
    run_dir = Path(cfg.output_dir) if cfg.output_dir else Path("runs") / f"{recipe_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if cfg.resume is True and not cfg.output_dir:
        raise ConfigError("resume: true needs output_dir (the run to resume); or pass resume=<checkpoint dir>")
    if isinstance(cfg.resume, str) and not cfg.output_dir:
        run_dir = Path(cfg.resume).resolve().parent.parent
    _check_writable_dir(run_dir)
    if cfg.resume is False and (run_dir / "metrics.jsonl").exists():
        raise UserError(f"output_dir {run_dir} already holds a run; pass resume=true or choose another output_dir")
    return run_dir


def _check_writable_dir(path: Path) -> None:
    """`path` is, or can be created as, a directory we may write in (checked before the model loads)."""
    if "\0" in str(path):
        raise UserError("output_dir: contains a NUL character")
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir {path} is a file, not a directory; choose another output_dir")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"output_dir {path}: {parent} is a file, so the directory cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"output_dir {path}: {parent} is not writable")


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def run(cfg: Config, recipe_name: str = "run", quiet: bool = False) -> dict:
    """Build a trainer, train, and return the run summary."""
    return GRPOTrainer(cfg, recipe_name=recipe_name, quiet=quiet).train()
