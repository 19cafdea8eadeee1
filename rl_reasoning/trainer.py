"""The GRPO training loop: prompts -> rollout -> rewards -> advantages -> update -> metrics and traces -> checkpoint.

One step draws B = `prompts_per_step` problems (tasks/), renders their prompts (prompts.py),
samples G completions for each (engine.py: our engine in rollout.py, or vLLM in
vllm_rollout.py), scores them (reward_runner.py), turns the rewards into group-relative
advantages (grpo.py) and runs mu = `grpo.num_iterations` optimizer steps on the batch
(update.py). With `distill.teacher` a frozen teacher scores the sampled tokens and the advantages
become per-token (on-policy distillation, teacher.py and grpo.distillation_advantages).
With `grpo.dynamic_sampling` (DAPO) the sampling and scoring repeat on new
prompts until B groups carry signal (dynamic_sampling.py); everything after it sees only the
kept batch. With `rollout.backend: vllm` the engine and its weight sync live in vllm_rollout.py.
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
import logging
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .adapters import apply_lora
from .config import Config
from .distributed import Collective, flat_config, start_accelerator
from .dynamic_sampling import DynamicSampling, Sampled
from .engine import RolloutBatch, rollout_seed
from .errors import UserError
from .evaluation import EvalSettings, evaluate, problem_columns
from .grpo import (
    AdaptiveEntropy,
    distillation_advantages,
    group_advantages,
    kl_folded_returns,
    reinforce_scores,
    rloo_advantages,
    whiten,
    whitening_sums,
)
from .jsonl import read_records
from .metrics import StepRows, distill_metrics, distill_sums, format_summary, gather_rows, step_metrics, summary_line, timing_metrics
from .models import eos_token_ids, load_model
from .moe import moe_spec
from .multiturn import MultiTurnEngine, build_environment, build_toolbox, episode_columns, episode_metrics, multi_turn, prompt_with_tools, reward_columns
from .precision import Precision, SamplingCopy, run_precision
from .prompts import encode_prompt, render_prompt
from .reward_runner import CORRECT, RewardRunner, accuracy_runner, answer_fallback
from .rollout import RolloutEngine
from .run_files import RunFiles, run_directory, summary_record, summary_text, trace_records
from .runtime import configure_cpu, quiet_library_progress_bars, seed_everything
from .sharded import configure_deepspeed, full_parameters_for_generation, gathered_state_dict, is_sharded
from .tasks import PromptSampler, load_task
from .teacher import load_teacher
from .traces import AlarmMonitor, Analyzer, step_statistics
from .traces.schema import metrics_problem
from .untrusted import terminal_safe
from .update import PolicyUpdate, dropped_rows, loss_mask, optimizer_and_scheduler


class GRPOTrainer:
    def __init__(self, cfg: Config, recipe_name: str = "run", quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.run_dir = run_directory(cfg, recipe_name)
        quiet_library_progress_bars()
        configure_cpu(cfg.threads)
        self._build_accelerator()
        seed_everything(cfg.seed)
        # Everything that can fail on bad input is checked before the model is loaded.
        self._build_rewards_and_data()
        self._build_policy()
        self.teacher = load_teacher(cfg, self.accelerator.device, self.tokenizer, self.precision.compute)  # None without distill.teacher
        self._build_engine()
        self.generator = torch.Generator(device=self.accelerator.device).manual_seed(cfg.seed)  # sampling happens on the model's device
        self.step = 0
        self.eval_history: list[dict] = []
        self.files = RunFiles(self.run_dir, self.is_main)
        self.resumed_from = self._restore()
        self.files.open(cfg)
        if cfg.report_to and self.is_main:
            self.accelerator.init_trackers("rl_reasoning", config=flat_config(cfg.to_dict()))

    # ------------------------------------------------------------------ set-up, in order

    def _build_accelerator(self) -> None:
        """The accelerate state for this launch, checked (distributed.start_accelerator)."""
        self.accelerator = start_accelerator(self.cfg, self.run_dir)
        self.collective = Collective(self.accelerator)
        self.is_main = self.accelerator.is_main_process

    def _build_rewards_and_data(self) -> None:
        cfg = self.cfg
        self.rewards = RewardRunner(cfg.rewards, cfg.weights())
        self.accuracy = accuracy_runner(cfg)
        self.answer_fallback = answer_fallback(self.accuracy)
        self.toolbox = build_toolbox(cfg)  # a missing tool is an error here, before the model loads
        self.environment = build_environment(cfg, self.accuracy)
        self.prompt = prompt_with_tools(cfg.prompt, self.toolbox, cfg.rollout.describe_tools)  # what every prompt is rendered with
        self.data = load_task(cfg.data)
        columns = reward_columns(self.data, multi_turn=bool(self.toolbox or self.environment))
        self.rewards.check_columns(columns, "the data")
        self.accuracy.check_columns(columns, "the data")
        self.sampler = PromptSampler(self.data, cfg.seed)
        self.analyzer = Analyzer(cfg.traces.reflection_markers, list(cfg.traces.extra_reflection_markers))
        self.alarms = AlarmMonitor(cfg.traces.alarms)

    def _build_policy(self) -> None:
        """Policy (with LoRA adapters if asked), frozen reference when beta > 0, optimizer, scheduler, the update."""
        cfg = self.cfg
        loaded = load_model(cfg.model.name, self.accelerator.device, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.cache_dir)
        self.tokenizer, self.model_source = loaded.tokenizer, loaded.source
        model = loaded.model  # fp32: the master weights
        self.num_parameters = sum(p.numel() for p in model.parameters())
        model.config.use_cache = False
        self.precision = self._choose_precision(model)
        self._print(self.precision.describe())
        moe = moe_spec(model, cfg.model.router_aux_loss_coef)
        self.ref_model = None
        if cfg.grpo.beta > 0 and cfg.lora.r == 0:  # with LoRA the reference is the policy with adapters off
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # fp32, run under the update's autocast as the policy is
        if cfg.lora.r > 0:
            model = apply_lora(model, cfg.lora)
        self.num_trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        optimizer, scheduler = optimizer_and_scheduler(model, cfg)
        configure_deepspeed(self.accelerator, cfg.optim.micro_batch_size, cfg.optim.max_grad_norm)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        self.update = PolicyUpdate(cfg, self.accelerator, self.model, self.optimizer, self.scheduler, self.collective, moe, self.ref_model,
                                   self.precision)
        g = cfg.grpo
        self.adaptive_entropy = AdaptiveEntropy(g.entropy_coef, g.entropy_target, g.entropy_coef_delta, g.entropy_coef_min,
                                                g.entropy_coef_max) if g.use_adaptive_entropy else None

    def _choose_precision(self, model) -> Precision:
        """The run's compute dtype (precision.py): an accelerate config's mixed_precision decides when
        it sets one (DeepSpeed then owns the bf16 copy); otherwise model.compute_dtype, with the
        main process's choice shared so that every process computes alike."""
        setting, mixed = self.cfg.model.compute_dtype, self.accelerator.mixed_precision
        if mixed in ("bf16", "fp16"):
            if setting == "float32":
                raise UserError(f"model.compute_dtype: float32, but the accelerate config sets mixed_precision: {mixed}; "
                                "remove one of them")
            return Precision(torch.bfloat16 if mixed == "bf16" else torch.float16, f"accelerate config: mixed_precision {mixed}")
        chosen = run_precision(setting, self.accelerator.device, model, self.cfg.model.cache_dir)
        if self.collective.world > 1:
            main = self.collective.gather_objects([chosen.name])[0]
            if main != chosen.name:
                chosen = Precision(getattr(torch, main), f"the main process's choice ({chosen.reason} here)", chosen.probe)
        return chosen

    def _build_engine(self) -> None:
        """The generation engine (ours on the policy itself, or a colocated vLLM engine kept in
        sync) and, with grpo.dynamic_sampling, the refill that calls it again."""
        cfg = self.cfg
        policy = self.accelerator.unwrap_model(self.model)
        eos = eos_token_ids(policy, self.tokenizer)
        self.vllm, self.sampling_copy = None, None
        if cfg.rollout.backend == "vllm":
            from .vllm_rollout import VLLMBackend

            self.vllm = VLLMBackend(cfg, self.model_source, self.tokenizer, eos, self.model, self.accelerator, self.precision.compute)
            self.engine = self.vllm.engine
            self._print(f"vLLM engine started in {self.engine.startup_seconds:.1f} s")
        else:
            # half-precision compute: sampling runs on a copy in that dtype, refreshed after optimizer steps
            # (sharded policies, which cannot be copied, sample under autocast instead)
            self.sampling_copy = SamplingCopy(policy, self.precision.compute) if self.precision.half and not is_sharded(self.accelerator) else None
            self.engine = RolloutEngine(policy, self.tokenizer, eos, self.tokenizer.pad_token_id)
            self.engine = multi_turn(cfg, self.engine, self.tokenizer, eos, self.toolbox, self.environment)  # tools, environments
        g = cfg.grpo
        self.dynamic_sampling = DynamicSampling(cfg.prompts_per_step, cfg.rollout.num_generations, g.dynamic_sampling_metric,
                                                cfg.accuracy_reward_name, g.max_num_gen_batches, self.collective,
                                                self.tokenizer.pad_token_id) if g.dynamic_sampling else None

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
        if self.sampling_copy is not None:  # the masters changed under it
            self.sampling_copy.invalidate()
        self.sampler.load_state_dict(state["sampler"])
        if self.adaptive_entropy is not None and "entropy_coef" in state:
            self.adaptive_entropy.coef = state["entropy_coef"]
        self.files.truncate_after(self.step)
        if self.is_main:
            ckpt.set_aside_newer_checkpoints(self.run_dir, self.step)
        self.eval_history = list(read_records(self.run_dir / "eval.jsonl", check=metrics_problem))
        self._print(f"resumed from {resume_from} at step {self.step}")
        if self.vllm:
            self.vllm.sync(self.update.optimizer_steps)
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
            last, saved_at = {}, None
            try:
                stop = stop_requested()
                while self.step < cfg.max_steps and not stop:
                    signals.step = self.step + 1
                    last = self.train_step()
                    self.step += 1
                    for alarm in last.get("alarms", []):
                        self._warn(f"step {self.step}: {alarm}", bar)
                    if self.dynamic_sampling and (ran_out := self.dynamic_sampling.ran_out_warning(last)):
                        self._warn(f"step {self.step}: {ran_out}", bar)
                    bar.update(1)
                    fmt_name, fmt_value = format_summary(last)
                    bar.set_postfix({"reward": f"{last['reward/mean']:.3f}", "acc": f"{last['accuracy']:.2f}", fmt_name: f"{fmt_value:.2f}",
                                     "len": f"{last['completions/mean_length']:.0f}", "s": f"{last['time/step']:.1f}"})
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
        cfg, G = self.cfg, self.cfg.rollout.num_generations
        t_start = time.perf_counter()
        seconds = {"generation": 0.0, "old_logprobs": 0.0, "reward": 0.0}  # summed over generation rounds

        # prompts, rollout, rewards (grpo.dynamic_sampling: more rounds until B groups carry signal)
        batch = self._sample_and_score(0, seconds)
        refill = self.dynamic_sampling.refill(batch, lambda r: self._sample_and_score(r, seconds), seconds) if self.dynamic_sampling else None
        batch = refill.batch if refill else batch
        rollout, rewards = batch.rollout, batch.rewards
        sampler_stats = self.vllm.mismatch_metrics(rollout) if self.vllm else {}
        t_rew = time.perf_counter()

        # advantages (on the global batch) and the update (on this process's rows)
        rows = gather_rows(self.collective, rollout, rewards, batch.completions, has_entropy=not self.vllm or self.vllm.recomputes)
        mine = self.collective.shard.row_slice(len(rows.rewards))
        dropped = dropped_rows(rows.zero_variance, G, cfg.grpo.drop_zero_variance_groups)[mine]  # (N,)
        mask = loss_mask(rollout.sampled_mask, rewards.total, rollout.truncated, dropped, cfg.grpo.mask_truncated_completions)  # (N, T)
        advantages, reward_kl = self._advantages(rollout, rows, mine, mask)  # (N,) or (N, T) REINFORCE++ with its KL
        teacher_sums = None
        if self.teacher is not None:  # on-policy distillation: per-token advantages (N, T)
            advantages, teacher_sums = self._distillation_advantages(rollout, advantages, mask, seconds)
        entropy_coef = self._entropy_coef(rollout, mask)
        update_stats = self.update(rollout, advantages, mask, dropped, entropy_coef)
        if reward_kl is not None:  # REINFORCE++: the KL folded into the return is the `kl` metric
            update_stats["kl_sum"] = self.collective.sum({"kl": float(reward_kl.sum())})["kl"]
        if self.vllm:
            sampler_stats.update(self.vllm.after_update(self.step + 1, self.update.optimizer_steps))
        t_upd = time.perf_counter()
        seconds.update(update=t_upd - t_rew - seconds.get("teacher", 0.0), step=t_upd - t_start)

        # metrics, traces
        metrics, analyses = self._step_metrics(batch, rows, update_stats, sampler_stats, entropy_coef, teacher_sums, seconds, refill)
        if self.is_main:
            traces = trace_records(self.step + 1, batch.problems, batch.prompt_texts, rows, analyses, cfg.accuracy_reward_name,
                                   self.answer_fallback)
            self.files.step(metrics, traces)
            self._track(metrics, self.step + 1)
        return metrics

    def _advantages(self, rollout: RolloutBatch, rows: StepRows, mine: slice, mask: torch.Tensor):
        """This process's advantages, (N,) or per token (N, T), by `grpo.advantage_estimator`, and
        with REINFORCE++ and beta > 0 its per-token KL (N, T) (else None). Sets `rows.advantages`
        (B*G,) for metrics and traces: per-token advantages appear there as each row's token mean."""
        cfg, G = self.cfg, self.cfg.rollout.num_generations
        estimator = cfg.grpo.advantage_estimator
        if estimator == "grpo":
            rows.advantages = group_advantages(rows.rewards, G, cfg.grpo.scale_rewards)  # (B*G,)
            return rows.advantages[mine], None
        if estimator == "rloo":
            rows.advantages = rloo_advantages(rows.rewards, G)  # (B*G,)
            return rows.advantages[mine], None
        scores = reinforce_scores(rows.rewards, G, baseline=estimator == "reinforce_plus_plus_baseline")[mine]  # (N,)
        kl = None
        if estimator == "reinforce_plus_plus" and cfg.grpo.beta > 0:
            ref_logp = self.update.reference_token_logprobs(rollout, mask)  # (N, T)
            scores, kl = kl_folded_returns(scores, rollout.logprobs, ref_logp, mask, cfg.grpo.beta)  # (N, T) each
        advantages = whiten(scores, self.collective.sum(whitening_sums(scores, mask)))  # over the global batch's trained tokens
        per_row = advantages if advantages.dim() == 1 else (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (N,)
        rows.advantages = self.collective.gather(per_row.float())  # (B*G,)
        return advantages, kl

    def _distillation_advantages(self, rollout: RolloutBatch, advantages: torch.Tensor, mask: torch.Tensor, seconds: dict):
        """On-policy distillation: the teacher scores the sampled tokens; returns per-token
        advantages (N, T) and the sums behind the distill/* metrics. Adds seconds["teacher"]."""
        t_start = time.perf_counter()
        teacher_logp, teacher_tokens = self.teacher.logprobs(rollout, mask)  # (N, T)
        advantages = distillation_advantages(advantages, rollout.logprobs, teacher_logp, mask, self.cfg.distill.coef, self.cfg.distill.task_coef)
        sums = self.collective.sum({**distill_sums(rollout.logprobs, teacher_logp, mask), "forwarded": teacher_tokens})
        seconds["teacher"] = time.perf_counter() - t_start
        return advantages, sums

    def _step_metrics(self, batch: Sampled, rows: StepRows, update_stats: dict, sampler_stats: dict, entropy_coef: float,
                      teacher_sums: dict | None, seconds: dict, refill) -> tuple[dict, list]:
        """The step's metrics line, and the self-correction analyses its traces need (main process only)."""
        cfg = self.cfg
        correct = rows.components[cfg.accuracy_reward_name] >= CORRECT  # (B*G,)
        analyses = self._analyze(rows, batch.problems, correct) if self.is_main else []
        metrics = step_metrics(rows, update_stats, cfg.accuracy_reward_name, self.scheduler.get_last_lr()[0],
                               self.num_parameters, cfg.grpo.num_iterations, cfg.grpo.beta)
        metrics.update(self.collective.mean_of_dicts({"s": sampler_stats})["s"] if sampler_stats else {})
        metrics.update(update_stats.get("sampler", {}))  # our engine's gap to the update (already global)
        if self.step == 0:  # the first metrics line says how the run computes (the summary too)
            metrics.update(self.precision.metrics())
        metrics.update(step_statistics(analyses))
        metrics.update(episode_metrics(rows.episodes, correct))
        if cfg.grpo.entropy_coef > 0 or self.adaptive_entropy is not None:
            metrics["entropy/coef"] = entropy_coef
        if teacher_sums is not None:
            metrics.update(distill_metrics(teacher_sums))
            metrics["flops/step"] += 2.0 * self.teacher.num_parameters * teacher_sums["forwarded"]  # the teacher's forward
        if not (self.vllm and self.vllm.recomputes):
            del seconds["old_logprobs"]
        seconds = self.collective.max(seconds)
        metrics.update(timing_metrics(seconds, rows))
        if refill is not None:
            metrics.update(refill.metrics(metrics, seconds, self.num_parameters))
        if cfg.traces.analyze:
            metrics["alarms"] = [f"{a.name}: {a.message}" for a in self.alarms.update({**metrics, "step": self.step + 1})]
        metrics["step"] = self.step + 1
        return metrics, analyses

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
        if self.vllm:
            with self.precision.autocast(self.accelerator.device):  # as the update computes them
                self.vllm.recompute_old_logprobs(rollout)
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

    def _analyze(self, rows: StepRows, problems: list[dict], correct: torch.Tensor) -> list:
        """Self-correction analysis of every completion (empty when traces.analyze is off)."""
        if not self.cfg.traces.analyze:
            return []
        G = rows.group_size
        episodes = rows.episodes or [{}] * len(rows.completions)
        return [self.analyzer(text, str(problems[i // G]["answer"]), bool(correct[i]), int(rows.lengths[i]),
                              episodes[i].get("turn_texts"), episodes[i].get("verdicts"))
                for i, text in enumerate(rows.completions)]

    # ------------------------------------------------------------------ generation engines

    @contextlib.contextmanager
    def _generation_engine(self):
        """The engine to sample with: vLLM as is, or ours on the full-parameter policy (sharded.py)."""
        if self.vllm:
            yield self.engine
            return
        with full_parameters_for_generation(self.accelerator, self.model) as policy:
            if self.sampling_copy is not None:
                self.engine.model = self.sampling_copy.refreshed(policy, self.update.optimizer_steps)
                yield self.engine
                return
            self.engine.model = policy
            with self.precision.autocast(self.accelerator.device):  # fp32: no-op; sharded half precision: autocast
                yield self.engine

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
        """summary.json's record; prints held-out accuracy before -> after and where the files are."""
        out = summary_record(self.run_dir, self.step, self.num_parameters, self.num_trainable_parameters, final_checkpoint, self.eval_history)
        out["precision"] = self.precision.record()
        self._print(summary_text(out))
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


def run(cfg: Config, recipe_name: str = "run", quiet: bool = False) -> dict:
    """Build a trainer, train, and return the run summary."""
    return GRPOTrainer(cfg, recipe_name=recipe_name, quiet=quiet).train()
