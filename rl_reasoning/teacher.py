"""The frozen teacher of on-policy distillation (`distill.teacher`; docs/distillation.md).

`load_teacher` resolves the teacher like `model.name` (checkpoint, HF directory, .gguf file,
built-in name or Hub id), refuses one whose tokenizer differs from the policy's (the teacher
scores the policy's own token ids, so a different vocabulary would score other text) and
freezes it. `Teacher.logprobs` scores a rollout's completions teacher-forced, without
gradients, in micro-batches, at the rollout's temperature with logprobs.py's convention
(log softmax(logits / T) over the full vocabulary), so its log-probs compare token by token with
the rollout's own sampling log-probs. With `optim.prefix_grouping` (on by default on CPU) the micro-batches
are the update's (update.plan_micro_batches: one prompt each) and each prompt runs once per
micro-batch (logprobs.grouped_completion_logprobs), as in the update; the teacher runs no
backward, so this holds with several processes too, each scoring its own rows.
"""

from __future__ import annotations

import torch

from .config import Config
from .cpu_kernels import gqa_attention
from .engine import RolloutBatch
from .errors import UserError
from .logprobs import grouped_completion_logprobs, micro_batch_inputs, teacher_forced_logits, token_logprobs
from .update import micro_batch_tokens_on, plan_micro_batches, prefix_grouping_on, trained_tokens

# Chat markers, digits, punctuation, accents and CJK: encodes differently under any two
# tokenizers that do not share their merges and ids.
PROBE = "<|im_start|>user\nWhat is 12 + 7.5 * (3 - 40)? Réponse: ∑ 日本語 😀<|im_end|>\n<think> so </think> <answer>-189.5</answer>"


def tokenizer_mismatch(student, teacher) -> str | None:
    """Why two tokenizers would not give the same ids for the same text, or None when they agree:
    vocabulary size (added tokens included), the token -> id table, and the ids of `PROBE`."""
    if len(student) != len(teacher):
        return f"its vocabulary has {len(teacher)} tokens, the policy's {len(student)}"
    if student.get_vocab() != teacher.get_vocab():
        return "same vocabulary size, but different tokens or token ids"
    if student.encode(PROBE, add_special_tokens=False) != teacher.encode(PROBE, add_special_tokens=False):
        return "a probe string encodes to different token ids"
    return None


class Teacher:
    """A frozen model that scores completions; `num_parameters` for the FLOPs count."""

    def __init__(self, model, micro_batch_size: int, temperature: float, device, prefix_grouping: bool = False,
                 token_budget: int | None = None):
        self.model, self.micro_batch_size, self.temperature, self.device = model, micro_batch_size, temperature, device
        self.prefix_grouping, self.token_budget = prefix_grouping, token_budget
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @torch.no_grad()
    def logprobs(self, rollout: RolloutBatch, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The teacher's log-probs of the sampled tokens (N, Lc), 0 where `mask` (N, Lc) is 0, and
        the tokens it ran (prompt + completion; a grouped prompt counts once per micro-batch).
        Only rows with a trained token are scored, in micro-batches sorted by length (little padding)."""
        out = torch.zeros_like(rollout.logprobs, dtype=torch.float32)  # (N, Lc)
        prompt_lengths = rollout.prompt_mask.sum(-1)  # (N,)
        completion_lengths = rollout.completion_mask.sum(-1)  # (N,) what the teacher reads (tool results included)
        micro = plan_micro_batches(
            mask.sum(-1), prompt_lengths, None, self.micro_batch_size, rollout.group_size, self.prefix_grouping,
            skip_zero_advantage=False, keep_every_row=False, token_budget=self.token_budget,
        )
        for idx in micro:
            p_ids, p_mask, c_ids, c_attn, _ = micro_batch_inputs(rollout, mask, idx, self.device)
            if self.prefix_grouping:
                prompt = p_ids[0][p_mask[0].bool()]  # (Lp,) every row of idx shares it
                with gqa_attention(self.model):  # CPU: shared KV heads inside SDPA
                    logp = grouped_completion_logprobs(self.model, prompt, c_ids, c_attn, self.temperature)  # (b, T')
            else:
                logits = teacher_forced_logits(self.model, p_ids, p_mask, c_ids, c_attn, self.temperature)[0]  # (b, T', V)
                logp = token_logprobs(logits, c_ids)[0]  # (b, T')
            width = c_ids.shape[1]
            out[idx, :width] = logp.float().cpu().to(out.device) * mask[idx, :width].to(out.dtype)
        return out, trained_tokens(micro, completion_lengths, prompt_lengths, self.prefix_grouping)


def load_teacher(cfg: Config, device, student_tokenizer, compute_dtype: torch.dtype = torch.float32) -> Teacher | None:
    """The frozen teacher of `distill.teacher` (None when it is not set), on `device`, in the
    run's compute dtype (frozen: no master weights needed); a one-line UserError when its
    tokenizer differs from the policy's."""
    from .models import load_model
    from .precision import cast_parameters

    name = cfg.distill.teacher
    if name is None:
        return None
    try:
        loaded = load_model(name, device, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.cache_dir)
    except UserError as e:  # "model: ... does not exist" is about this key, not model.name
        raise UserError(f"distill.teacher: {str(e).removeprefix('model: ')}") from None
    why = tokenizer_mismatch(student_tokenizer, loaded.tokenizer)
    if why is not None:
        raise UserError(f"distill.teacher: {name!r} does not share the policy's tokenizer ({why}); on-policy distillation "
                        "scores the policy's own token ids, so the teacher needs the same tokenizer")
    model = cast_parameters(loaded.model, compute_dtype).eval().requires_grad_(False)
    model.config.use_cache = False
    micro = cfg.distill.micro_batch_size or cfg.optim.micro_batch_size
    budget = None if cfg.distill.micro_batch_size is not None else micro_batch_tokens_on(cfg.optim, torch.device(device), 1)  # its own row count wins
    return Teacher(model, micro, cfg.rollout.temperature, device, token_budget=budget,
                   prefix_grouping=prefix_grouping_on(cfg.optim.prefix_grouping, torch.device(device)))
