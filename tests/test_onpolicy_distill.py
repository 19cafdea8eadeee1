"""On-policy distillation (`distill.teacher`): per-token advantages in the loss (hand-built tensors),
the teacher's scoring and tokenizer check, and the trainer end to end on the tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from rl_reasoning.config import PromptConfig, RolloutConfig, load_config
from rl_reasoning.errors import ConfigError, UserError
from rl_reasoning.grpo import LossNormalizer, distillation_advantages, policy_loss
from rl_reasoning.jsonl import read_records
from rl_reasoning.logprobs import teacher_forced_logits
from rl_reasoning.models import load_model
from rl_reasoning.prompts import encode_prompt, render_prompt
from rl_reasoning.rollout import RolloutEngine
from rl_reasoning.teacher import Teacher, tokenizer_mismatch
from rl_reasoning.trainer import GRPOTrainer
from rl_reasoning.update import plan_micro_batches
from tests.conftest import build_tiny_model, build_tokenizer
from tests.test_trainer import overrides, train

# --------------------------------------------------------------------------- the loss, by hand

# Two completions, three token slots; row 1 has two trained tokens. Ratios exp(logp - old):
# e^0.1 = 1.105 (inside [0.8, 1.2]), e^0.5 = 1.65 (above), e^-0.5 = 0.61 (below), 1, e^0.3 = 1.35, -.
LOGP = [[0.1, 0.5, -0.5], [0.0, 0.3, 0.0]]
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def _hand_loss(adv, loss_type, eps=0.2):
    """sum over trained tokens of -min(rho A, clip(rho) A), aggregated by hand: (loss, d loss / d logp)."""
    per_row, grads, total = [], [[0.0] * 3 for _ in range(2)], 0.0
    for i in range(2):
        row = []
        for t in range(3):
            if not MASK[i, t]:
                continue
            rho, a = math.exp(LOGP[i][t]), adv[i][t]
            clipped = min(max(rho, 1 - eps), 1 + eps)
            unclipped_wins = rho * a <= clipped * a  # min picks the unclipped term (its gradient flows)
            row.append(-min(rho * a, clipped * a))
            grads[i][t] = -rho * a if unclipped_wins else 0.0
        per_row.append(row)
    if loss_type == "dapo":
        n = sum(len(r) for r in per_row)
        return sum(map(sum, per_row)) / n, [[g / n for g in r] for r in grads]
    # grpo: mean over the 2 rows of each row's token mean
    total = sum(sum(r) / len(r) for r in per_row) / 2
    return total, [[g / (len(per_row[i]) * 2) for g in grads[i]] for i in range(2)]


def _loss(adv, loss_type, **kw):
    logp = torch.tensor(LOGP, requires_grad=True)
    norm = LossNormalizer(loss_type, num_sequences=2, num_tokens=5, max_new_tokens=3)
    loss, stats = policy_loss(logp, torch.zeros(2, 3), adv, MASK, norm, epsilon=0.2, **kw)
    loss.backward()
    return loss.item(), logp.grad.tolist(), stats


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_per_sequence_advantages_behave_as_before_and_as_their_per_token_broadcast(loss_type):
    adv = torch.tensor([1.0, -2.0])
    loss, grad, stats = _loss(adv, loss_type)
    expected, expected_grad = _hand_loss([[1.0] * 3, [-2.0] * 3], loss_type)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert grad == [pytest.approx(r, abs=1e-7) for r in expected_grad]
    assert stats["clip_high_tokens"] == 1 and stats["clip_low_tokens"] == 0  # token (0, 1): rho 1.65 > 1.2 with A > 0
    broadcast = _loss(adv[:, None].expand(2, 3).contiguous(), loss_type)
    assert broadcast == (loss, grad, stats)  # bit for bit


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_per_token_advantages_by_hand(loss_type):
    adv = [[0.5, -1.0, -3.0], [2.0, 0.25, 9.0]]  # (0, 1): rho 1.65 with A < 0 stays unclipped; (0, 2): rho 0.61 with A < 0 is clipped
    loss, grad, stats = _loss(torch.tensor(adv), loss_type)
    expected, expected_grad = _hand_loss(adv, loss_type)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert grad == [pytest.approx(r, abs=1e-7) for r in expected_grad]
    assert grad[0][2] == 0 and grad[1][2] == 0  # clipped token, untrained token
    assert stats["clip_low_tokens"] == 1 and stats["clip_high_tokens"] == 1  # (0, 2) low; (1, 1): rho 1.35, A > 0


def test_per_token_advantages_refuse_the_sequence_ratio_and_wrong_shapes():
    norm = LossNormalizer("dapo", 2, 5, 3)
    with pytest.raises(ValueError, match="importance_sampling_level='token'"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), MASK, norm, importance_sampling_level="sequence")
    with pytest.raises(ValueError, match=r"advantages must be \(b,\) or \(b, T\)"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 2), MASK, norm)


def test_distillation_advantages_by_hand():
    task = torch.tensor([1.0, -0.5])
    student = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -7.0]])
    teacher = torch.tensor([[-1.5, -0.5, -0.5], [-1.0, -4.0, -1.0]])
    adv = distillation_advantages(task, student, teacher, MASK, coef=2.0, task_coef=0.5)
    # 0.5 * A_i - 2 * (student - teacher); 0 at the untrained token
    assert adv.flatten().tolist() == pytest.approx([0.5 - 1.0, 0.5 + 3.0, 0.5, -0.25 + 4.0, -0.25 - 7.8, 0.0])
    pure = distillation_advantages(task, student, teacher, MASK, coef=1.0, task_coef=0.0)
    assert torch.equal(pure, -(student - teacher) * MASK)


def test_rows_with_any_nonzero_token_advantage_are_trained():
    lengths, prompts = torch.tensor([3, 2, 3, 0]), torch.tensor([4, 4, 4, 4])
    adv = torch.tensor([[0.0, 0.0, 0.0], [0.0, -0.1, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    micro = plan_micro_batches(lengths, prompts, adv, 8, 2, False, skip_zero_advantage=True, keep_every_row=False)
    assert sorted(torch.cat(micro).tolist()) == [1, 2]  # row 0: every token 0; row 3: no trained token


# --------------------------------------------------------------------------- the teacher


@pytest.mark.parametrize("grouped", [False, True])
def test_teacher_scores_like_the_sampler_at_the_rollout_temperature(tiny, grouped):
    """The policy as its own teacher gives back the rollout's sampling log-probs (same temperature
    convention), so the reverse-KL estimate is 0; untrained rows are left at 0 and not run. With
    prefix grouping each prompt runs once per micro-batch: prompt 0's three rows take two
    micro-batches of 2, prompt 1's two remaining rows one."""
    model, tok = tiny
    model.eval()
    prompts = [encode_prompt(tok, render_prompt(tok, q, PromptConfig()), "chat") for q in ("What is 3 + 4?", "9 * 8")]
    batch = RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id).generate(
        prompts, RolloutConfig(num_generations=3, max_new_tokens=8, temperature=0.7), torch.Generator().manual_seed(0))
    mask = batch.completion_mask.float().clone()
    mask[4] = 0
    teacher = Teacher(model, micro_batch_size=2, temperature=0.7, device="cpu", prefix_grouping=grouped)
    logp, tokens = teacher.logprobs(batch, mask)
    assert logp.shape == batch.logprobs.shape
    assert (logp - batch.logprobs * mask).abs().max() < 1e-5
    assert logp[4].abs().max() == 0
    kept = [i for i in range(len(batch)) if i != 4]
    prompt_lengths = batch.prompt_mask.sum(-1)
    prompts = int(2 * prompt_lengths[0] + prompt_lengths[3]) if grouped else int(prompt_lengths[kept].sum())
    assert tokens == prompts + int(batch.completion_mask[kept].sum())


class _Tok:
    """A stand-in tokenizer: a vocabulary and a fixed encoding."""

    def __init__(self, vocab, ids):
        self.vocab, self.ids = vocab, ids

    def __len__(self):
        return len(self.vocab)

    def get_vocab(self):
        return dict(self.vocab)

    def encode(self, text, add_special_tokens=False):
        return list(self.ids)


def test_tokenizer_mismatch_reasons():
    tok = build_tokenizer()
    assert tokenizer_mismatch(tok, build_tokenizer()) is None
    bigger = build_tokenizer()
    bigger.add_tokens(["<extra_token>"])
    assert tokenizer_mismatch(tok, bigger) == f"its vocabulary has {len(tok) + 1} tokens, the policy's {len(tok)}"
    assert tokenizer_mismatch(_Tok({"a": 0, "b": 1}, [0]), _Tok({"a": 1, "b": 0}, [0])) == "same vocabulary size, but different tokens or token ids"
    assert tokenizer_mismatch(_Tok({"a": 0, "b": 1}, [0, 1]), _Tok({"a": 0, "b": 1}, [1])) == "a probe string encodes to different token ids"


def test_a_teacher_with_another_tokenizer_is_a_one_line_error_before_training(tiny_model_dir, arithmetic_jsonl, tmp_path):
    other = tmp_path / "other-teacher"
    tok = build_tokenizer()
    tok.add_tokens(["<extra_token>"])
    build_tiny_model(len(tok), seed=1).save_pretrained(other)
    tok.save_pretrained(other)
    cfg = load_config(None, overrides(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", distill__teacher=str(other)))
    with pytest.raises(UserError) as err:
        GRPOTrainer(cfg, quiet=True)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"distill.teacher: '{other}' does not share the policy's tokenizer (its vocabulary has")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    cfg.distill.teacher = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"^distill.teacher: '.*nowhere' does not exist"):
        GRPOTrainer(cfg, quiet=True)


# --------------------------------------------------------------------------- the trainer, end to end


def _exact_reverse_kl(student, teacher, batch) -> float:
    """Mean over the batch's completion tokens of the full-vocabulary KL(student || teacher) at T = 1."""
    m = batch.completion_mask.float()
    with torch.no_grad():
        ls, lt = (torch.log_softmax(teacher_forced_logits(model.eval(), batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                                          batch.completion_mask, 1.0)[0], -1) for model in (student, teacher))
    return float(((ls.exp() * (ls - lt)).sum(-1) * m).sum() / m.sum())


def test_distillation_lowers_the_reverse_kl_to_a_fixed_teacher(tiny_model_dir, arithmetic_jsonl, tmp_path):
    """Student = the tiny model, teacher = another seed, sharpened (final norm x 4). Rewards: the
    format reward alone, which the random student never earns, so every group has zero variance
    and a plain GRPO step trains nothing; here every row is trained and three steps lower the exact
    reverse KL on a fixed batch of the student's own samples."""
    tok = build_tokenizer()
    teacher_dir = tmp_path / "teacher"
    teacher = build_tiny_model(len(tok), seed=1)
    with torch.no_grad():
        teacher.model.norm.weight.mul_(4.0)
    teacher.save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)

    student = load_model(str(tiny_model_dir)).model
    questions = [f"What is {a} + {b}?" for a in range(10) for b in range(4)][::5]
    fixed = RolloutEngine(student, tok, [tok.eos_token_id], tok.pad_token_id).generate(
        [tok.encode(q) for q in questions], RolloutConfig(num_generations=4, max_new_tokens=8), torch.Generator().manual_seed(123))
    before = _exact_reverse_kl(student, teacher, fixed)

    _, summary = train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=3, prompts_per_step=32, optim__lr="2e-3",
                       optim__micro_batch_size=32, prompt__template="'{question}'", rewards="[format]", eval__at_start="false",
                       eval__at_end="false", distill__teacher=str(teacher_dir))
    after = _exact_reverse_kl(load_model(summary["final_checkpoint"]).model, teacher, fixed)
    assert after < before - 0.01, (before, after)

    metrics = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    for m in metrics:
        assert m["groups/zero_std_frac"] == 1.0 and m["update/trained_sequences"] == 32 * 4
        assert m["time/teacher"] > 0 and m["distill/teacher_logprob"] < 0
    # on-policy (ratio 1), pure distillation, dapo: the loss is the mean reverse-KL estimate itself
    assert metrics[0]["loss"] == pytest.approx(metrics[0]["distill/reverse_kl"], rel=1e-4)


def test_distillation_with_the_task_advantage_on_the_tiny_mixtral(tiny_moe_dir, tiny_model_dir, arithmetic_jsonl, tmp_path):
    """An MoE student, a dense teacher with the same tokenizer, the task advantage mixed in."""
    train(tiny_moe_dir, arithmetic_jsonl, tmp_path / "moe", max_steps=1, eval__at_start="false", eval__at_end="false",
          distill__teacher=str(tiny_model_dir), distill__task_coef="1.0", distill__micro_batch_size="5")
    (m,) = read_records(tmp_path / "moe" / "metrics.jsonl")
    assert m["moe/aux_loss"] > 0 and m["update/trained_sequences"] == 8
    assert math.isfinite(m["distill/reverse_kl"]) and m["distill/teacher_logprob"] < 0 and m["time/teacher"] > 0


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("settings, message", [
    (["distill.coef=0.5"], "distill.coef: has no effect without distill.teacher"),
    (["distill.task_coef=1"], "distill.task_coef: has no effect without distill.teacher"),
    (["distill.micro_batch_size=4"], "distill.micro_batch_size: has no effect without distill.teacher"),
    (["distill.teacher=''"], "distill.teacher: must not be empty"),
    (["distill.teacher=t", "distill.coef=-1"], "distill.coef: must be >= 0"),
    (["distill.teacher=t", "distill.coef=0"], "distill.coef: must be > 0 with distill.teacher"),
    (["distill.teacher=t", "distill.task_coef=-1"], "distill.task_coef: must be >= 0"),
    (["distill.teacher=t", "distill.micro_batch_size=0"], "distill.micro_batch_size: must be >= 1"),
    (["distill.teacher=t", "grpo.drop_zero_variance_groups=true"], "grpo.drop_zero_variance_groups: cannot be used with distill.teacher"),
    (["distill.teacher=t", "grpo.dynamic_sampling=true"], "grpo.dynamic_sampling: cannot be used with distill.teacher"),
    (["distill.teacher=t", "grpo.importance_sampling_level=sequence", "grpo.num_iterations=2"],
     "grpo.importance_sampling_level: 'sequence' cannot be used with distill.teacher"),
    (["distill.tacher=t"], "unknown key 'distill.tacher' (did you mean distill.teacher?)"),
])
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, settings)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


def test_good_settings_load():
    cfg = load_config(None, ["distill.teacher=runs/x/checkpoints/step-000010", "distill.task_coef=1", "distill.coef=0.5"])
    assert (cfg.distill.teacher, cfg.distill.coef, cfg.distill.task_coef, cfg.distill.micro_batch_size) == \
        ("runs/x/checkpoints/step-000010", 0.5, 1.0, None)
    assert load_config(None, []).distill.teacher is None
