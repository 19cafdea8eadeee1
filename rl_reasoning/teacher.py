"""The frozen teacher of on-policy distillation (`distill.teacher`; docs/distillation.md).

`load_teacher` resolves the teacher like `model.name` (checkpoint, HF directory, .gguf file,
built-in name or Hub id), refuses one whose tokenizer differs from the policy's (the teacher
scores the policy's own token ids, so a different vocabulary would score other text) and
freezes it. `Teacher.logprobs` scores a rollout's completions teacher-forced, without
gradients, in micro-batches, at the rollout's temperature with logprobs.py's convention
(log softmax(logits / T) over the full vocabulary), so its log-probs compare token by token with
the rollout's own sampling log-probs. With several processes each process scores its own rows.
"""

from __future__ import annotations

import torch

from .config import Config
from .engine import RolloutBatch
from .errors import UserError
from .logprobs import micro_batch_inputs, picked_logprobs, teacher_forced_logits

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

    def __init__(self, model, micro_batch_size: int, temperature: float, device):
        self.model, self.micro_batch_size, self.temperature, self.device = model, micro_batch_size, temperature, device
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @torch.no_grad()
    def logprobs(self, rollout: RolloutBatch, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The teacher's log-probs of the sampled tokens (N, Lc), 0 where `mask` (N, Lc) is 0, and
        the prompt + completion tokens it ran. Only rows with a trained token are scored, in
        micro-batches sorted by length (little padding)."""
        out = torch.zeros_like(rollout.logprobs, dtype=torch.float32)  # (N, Lc)
        lengths = mask.sum(-1)  # (N,)
        rows = torch.nonzero(lengths > 0).flatten()
        total = rollout.prompt_mask.sum(-1) + rollout.completion_mask.sum(-1)  # (N,)
        rows = rows[torch.argsort(total[rows], stable=True)]
        for i in range(0, len(rows), self.micro_batch_size):
            idx = rows[i : i + self.micro_batch_size]
            p_ids, p_mask, c_ids, c_attn, _ = micro_batch_inputs(rollout, mask, idx, self.device)
            logits = teacher_forced_logits(self.model, p_ids, p_mask, c_ids, c_attn, self.temperature)[0]  # (b, T', V)
            width = c_ids.shape[1]
            out[idx, :width] = picked_logprobs(logits, c_ids).float().cpu().to(out.device) * mask[idx, :width].to(out.dtype)
        return out, int(total[rows].sum())


def load_teacher(cfg: Config, device, student_tokenizer) -> Teacher | None:
    """The frozen teacher of `distill.teacher` (None when it is not set), on `device`, in the
    policy's dtype; a one-line UserError when its tokenizer differs from the policy's."""
    from .models import load_model

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
    model = loaded.model.eval().requires_grad_(False)
    model.config.use_cache = False
    micro = cfg.distill.micro_batch_size or cfg.optim.micro_batch_size
    return Teacher(model, micro, cfg.rollout.temperature, device)
