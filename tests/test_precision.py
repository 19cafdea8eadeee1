"""Mixed precision (issue #33): fp32 masters with bf16 compute, the compute-dtype choice per
device, log-probs under bf16 against fp32, the sampler/trainer gap and its correction, and exact
resume in bf16 compute. bf16 runs on every CPU (AVX2-only CPUs emulate it, slowly), so all of
this runs in CI; only the speed depends on the machine (bench/, never asserted here)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl_reasoning import precision as precision_module
from rl_reasoning.config import RolloutConfig, load_config
from rl_reasoning.jsonl import read_records
from rl_reasoning.logprobs import completion_logprobs
from rl_reasoning.precision import Precision, SamplingCopy, cast_parameters, choose_on_cpu, resolve_precision
from rl_reasoning.rollout import RolloutEngine
from rl_reasoning.update import importance_correction_on
from tests.test_crash_resume import ROOT, assert_same_run, command, reference_run, steps_in
from tests.test_crash_resume import spawn as spawn  # noqa: F401  (a fixture the kill -9 test uses)
from tests.test_trainer import train

FP32 = Precision(torch.float32, "test")
BF16 = Precision(torch.bfloat16, "test")


# ----------------------------------------------------------------------------- choosing the compute dtype


def test_cpu_choice_follows_the_measured_timings(monkeypatch, tmp_path):
    assert choose_on_cpu(fp32_ms=2.0, bf16_ms=1.0) and not choose_on_cpu(fp32_ms=1.0, bf16_ms=5.0)
    assert not choose_on_cpu(fp32_ms=1.1, bf16_ms=1.0)  # faster, but not clearly: fp32 stays
    calls = []

    def fake_probe(timings):
        def probe(hidden, intermediate, repeats=5):
            calls.append((hidden, intermediate))
            return {**timings, "bf16_speedup": timings["fp32_ms"] / timings["bf16_ms"]}
        return probe

    class Shapes:
        hidden_size, intermediate_size = 64, 96

    monkeypatch.setattr(precision_module, "probe_cpu", fake_probe({"fp32_ms": 3.0, "bf16_ms": 1.2}))
    fast = resolve_precision("auto", "cpu", Shapes, tmp_path / "a")
    assert fast.compute == torch.bfloat16 and "2.50x" in fast.reason and calls == [(64, 96)]
    assert fast.metrics()["precision/bf16_compute"] == 1.0 and fast.record()["master_dtype"] == "float32"
    again = resolve_precision("auto", "cpu", Shapes, tmp_path / "a")  # cached per machine: not probed again
    assert again.compute == torch.bfloat16 and again.probe["cached"] and len(calls) == 1

    monkeypatch.setattr(precision_module, "probe_cpu", fake_probe({"fp32_ms": 1.0, "bf16_ms": 5.6}))
    slow = resolve_precision("auto", "cpu", Shapes, tmp_path / "b")  # an AVX2-only CPU: bf16 emulated
    assert slow.compute == torch.float32 and not slow.half and "not the 1.2x needed" in slow.reason
    (tmp_path / "b" / "precision_probe.json").write_text("{not json")  # a corrupt cache is probed again and rewritten
    assert resolve_precision("auto", "cpu", Shapes, tmp_path / "b").compute == torch.float32 and len(calls) == 3
    assert json.loads((tmp_path / "b" / "precision_probe.json").read_text())
    # an explicit setting is obeyed without probing
    assert resolve_precision("bfloat16", "cpu").compute == torch.bfloat16
    assert resolve_precision("float32", "cpu").compute == torch.float32 and len(calls) == 3


def test_the_real_probe_measures_both_dtypes():
    from tests.timing import hang_guard

    with hang_guard(5.0, "the probe at SmolLM2's shapes (measured 0.2-0.3 s on 2 AVX2 cores)"):
        result = precision_module.probe_cpu(576, 1536)
    assert result["fp32_ms"] > 0 and result["bf16_ms"] > 0
    assert result["bf16_speedup"] == pytest.approx(result["fp32_ms"] / result["bf16_ms"], rel=1e-2)


@pytest.mark.parametrize("capability, expected", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float32)])
def test_cuda_choice_follows_the_device_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(precision_module, "probe_cpu", lambda *a, **k: pytest.fail("no CPU probe on CUDA"))
    chosen = resolve_precision("auto", torch.device("cuda"))
    assert chosen.compute == expected and chosen.probe == {}


def test_importance_correction_auto_follows_engine_and_precision():
    hf = load_config(None, [])
    assert not importance_correction_on(hf, FP32) and importance_correction_on(hf, BF16)
    assert not importance_correction_on(load_config(None, ["rollout.importance_correction=false"]), BF16)
    assert importance_correction_on(load_config(None, ["rollout.importance_correction=true"]), FP32)
    vllm = load_config(None, ["rollout.backend=vllm"])
    assert importance_correction_on(vllm, FP32)
    assert not importance_correction_on(load_config(None, ["rollout.backend=vllm", "rollout.vllm.recompute_logprobs=false"]), FP32)


def test_sampler_gap_metrics_on_hand_built_log_probs():
    from rl_reasoning.distributed import Collective
    from rl_reasoning.update import SamplerGap

    class Alone:  # one process
        num_processes, process_index, is_main_process = 1, 0, True

    gap = SamplerGap(cap=2.0)
    sampler = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    diffs = torch.tensor([[1e-5, -1e-5, 0.0], [1.0, 0.0, 5.0]])  # row 1 token 2 is padding (masked)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    gap.add(sampler + diffs, sampler, mask)
    m = gap.metrics(Collective(Alone()), corrected=True)
    kept = torch.tensor([1e-5, -1e-5, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert m["sampler/logprob_abs_diff"] == pytest.approx(float(kept.abs().mean()), rel=1e-5)
    assert m["sampler/logprob_abs_diff_max"] == pytest.approx(1.0, rel=1e-6)  # the masked 5.0 is not counted
    assert m["sampler/ratio_std"] == pytest.approx(float(kept.exp().std(unbiased=False)), rel=1e-4)
    assert m["sampler/importance_weight_mean"] == pytest.approx(float(kept.exp().clamp(max=2.0).mean()), rel=1e-5)
    assert m["sampler/importance_weight_capped_frac"] == pytest.approx(0.2)  # e^1 > 2
    tiny = SamplerGap(cap=2.0)  # a rounding-sized gap keeps a nonzero spread (no cancellation in r^2 sums)
    train = sampler + torch.tensor([[2e-6, -2e-6, 1e-6], [0.0, 0.0, 0.0]])
    tiny.add(train, sampler, mask)
    expected = float((train - sampler)[mask.bool()].double().exp().std(unbiased=False))  # ~1.3e-6
    assert tiny.metrics(Collective(Alone()), corrected=False)["sampler/ratio_std"] == pytest.approx(expected, rel=1e-3)
    assert expected > 1e-6
    assert SamplerGap(2.0).metrics(Collective(Alone()), corrected=True) == {}  # no trained token ran: nothing to report


# ----------------------------------------------------------------------------- what bf16 compute computes


def one_adamw_step(model, prec: Precision, lr: float = 1e-6) -> dict[str, torch.Tensor]:
    """One AdamW step at `lr` on a fixed teacher-forced loss; returns each parameter's change
    (in fp32), and leaves the model as it was."""
    torch.manual_seed(0)
    vocab = model.config.vocab_size
    prompt, completion = torch.randint(3, vocab, (4, 6)), torch.randint(3, vocab, (4, 8))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    with prec.autocast("cpu"):
        logp = completion_logprobs(model, prompt, torch.ones_like(prompt), completion, torch.ones_like(completion), 1.0)  # (4, 8)
    (-(logp * torch.linspace(-1, 1, 4)[:, None]).mean()).backward()  # some rows pushed up, some down
    optimizer.step()
    delta = {n: (p.detach().float() - start[n].float()) for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(start[n])
    return delta


def moves_like(reference: dict, delta: dict) -> tuple[float, float]:
    """(share of the weights `reference` changes that `delta` changes too, relative L2 difference)."""
    moved = torch.cat([d.flatten() != 0 for d in reference.values()])
    also = torch.cat([d.flatten() != 0 for d in delta.values()])
    ref, got = torch.cat([d.flatten() for d in reference.values()]), torch.cat([d.flatten() for d in delta.values()])
    return float((also & moved).sum() / moved.sum()), float((got - ref).norm() / ref.norm())


def test_a_bf16_compute_step_moves_the_fp32_masters_like_an_fp32_step(tiny):
    model, _ = tiny
    fp32 = one_adamw_step(model, FP32)
    share_fp32, _ = moves_like(fp32, fp32)
    assert share_fp32 == 1.0 and float(torch.cat([d.flatten() != 0 for d in fp32.values()]).float().mean()) > 0.99
    mixed = one_adamw_step(model, BF16)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the masters never left fp32
    share, rel = moves_like(fp32, mixed)
    print("bf16 compute vs fp32:", share, rel)
    assert share > 0.99 and rel < 0.35, (share, rel)

    # the same check on pure-bf16 weights fails: at lr 1e-6 the update rounds away
    cast_parameters(model, torch.bfloat16)
    pure = one_adamw_step(model, FP32)
    share_pure, rel_pure = moves_like(fp32, pure)
    print("pure bf16 vs fp32:", share_pure, rel_pure)
    assert share_pure < 0.2 and rel_pure > 0.8, (share_pure, rel_pure)


def test_logprobs_and_entropies_under_bf16_compute_agree_with_fp32(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    prompt, completion = torch.randint(3, len(tok), (6, 5)), torch.randint(3, len(tok), (6, 12))
    args = (model, prompt, torch.ones_like(prompt), completion, torch.ones_like(completion), 1.0)
    with torch.no_grad():
        lp32, ent32 = completion_logprobs(*args, with_entropy=True)
        with BF16.autocast("cpu"):
            lp16, ent16 = completion_logprobs(*args, with_entropy=True)
    assert lp16.dtype == torch.float32 and ent16.dtype == torch.float32  # log-softmax and entropy in fp32
    assert (lp16 - lp32).abs().max() < 0.05 and (ent16 - ent32).abs().max() < 0.05  # bf16 matmuls, 8-bit mantissas
    assert (lp16 - lp32).abs().max() > 0  # and bf16 did compute them


def test_sampling_copy_decodes_valid_completions_and_follows_the_masters(tiny):
    model, tok = tiny
    copy = SamplingCopy(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copy.model.parameters())
    buffers = dict(copy.model.named_buffers())
    assert all(b.dtype == dict(model.named_buffers())[n].dtype for n, b in buffers.items())  # RoPE frequencies stay fp32
    engine = RolloutEngine(copy.refreshed(model, 0), tok, [tok.eos_token_id], tok.pad_token_id)
    prompts = [tok.encode("What is 3 + 4?"), tok.encode("Calculate 12 - 5.")]
    params = RolloutConfig(num_generations=4, max_new_tokens=12, temperature=1.0)
    batch = engine.generate(prompts, params, torch.Generator().manual_seed(0))
    real = batch.completion_mask.bool()
    assert (batch.completion_ids[real] < len(tok)).all() and (batch.lengths >= 1).all()
    assert torch.isfinite(batch.logprobs).all() and (batch.logprobs[real] <= 0).all()
    with torch.no_grad():  # the fp32 policy scores the bf16 copy's samples nearly as the copy did
        lp32 = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask, 1.0)
    assert (lp32 - batch.logprobs)[real].abs().mean() < 0.05

    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(0.5)
    assert not torch.equal(copy.model.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight.bfloat16())
    copy.refreshed(model, 0)  # same optimizer step: no copy
    assert not torch.equal(copy.model.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight.bfloat16())
    copy.refreshed(model, 1)
    assert torch.equal(copy.model.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight.bfloat16())
    with torch.no_grad():  # a checkpoint loaded into the masters (resume): the step count says nothing, invalidate() does
        model.model.layers[0].mlp.up_proj.weight.add_(0.5)
    copy.invalidate()
    copy.refreshed(model, 1)
    assert torch.equal(copy.model.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight.bfloat16())


def test_bf16_packing_is_used_exactly_where_onednn_has_bf16_kernels(tiny):
    from rl_reasoning.cpu_kernels import bf16_packing_supported, packing_available

    model, _ = tiny
    assert packing_available(model)  # fp32
    cast_parameters(model, torch.bfloat16)
    assert packing_available(model) == bf16_packing_supported() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# ----------------------------------------------------------------------------- the trainer in bf16 compute


def test_a_bf16_compute_run_logs_its_precision_and_sampler_gap_and_keeps_fp32_masters(tiny_model_dir, arithmetic_jsonl, tmp_path):
    trainer, summary = train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=2, model__compute_dtype="bfloat16",
                             grpo__num_iterations=2, eval__at_start="false")
    assert summary["precision"] == {"master_dtype": "float32", "compute_dtype": "bfloat16", "reason": "model.compute_dtype: bfloat16"}
    first, second = read_records(tmp_path / "run" / "metrics.jsonl")
    assert first["precision/bf16_compute"] == 1.0 and "precision/bf16_compute" not in second
    for m in (first, second):
        assert 0 < m["sampler/logprob_abs_diff"] <= m["sampler/logprob_abs_diff_max"] < 1.0
        assert 0 < m["sampler/importance_weight_mean"] <= 2.0 and m["sampler/ratio_std"] > 0  # correction on (auto, bf16)
    weights = load_file(str(Path(summary["final_checkpoint"]) / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())
    assert trainer.sampling_copy is not None and trainer.sampling_copy.version == trainer.update.optimizer_steps == 4


def test_an_fp32_run_measures_a_rounding_sized_gap_and_does_not_correct(tiny_model_dir, arithmetic_jsonl, tmp_path):
    _, summary = train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=1, model__compute_dtype="float32",
                       eval__at_start="false", eval__at_end="false")
    (first,) = read_records(tmp_path / "run" / "metrics.jsonl")
    assert first["precision/bf16_compute"] == 0.0 and summary["precision"]["compute_dtype"] == "float32"
    assert first["sampler/logprob_abs_diff_max"] < 1e-3  # packed decode kernels vs the update's: float rounding only
    assert "sampler/importance_weight_mean" not in first


def test_the_importance_correction_keeps_the_sampler_gap_out_of_the_clip(tiny_model_dir, arithmetic_jsonl, tmp_path):
    """bf16 compute, the correction on and off, a tight clip (epsilon 0.002, below the sampler gap).
    Off, the first iteration's ratio pi_train / pi_sampler is the gap itself, and the clip zeroes
    the gradient of every token whose gap exceeds epsilon, as if the policy had moved. On, the
    ratio's old log-probs are the update's own (ratio exactly 1: nothing clipped) and the gap
    enters as the truncated weight. (Unclipped and under the cap, both give the same gradient
    exp(delta) * A * grad log p: the correction changes what clipping and the cap do.)"""
    runs = {}
    for on in ("true", "false"):
        train(tiny_model_dir, arithmetic_jsonl, tmp_path / on, max_steps=2, model__compute_dtype="bfloat16", grpo__epsilon=0.002,
              rollout__importance_correction=on, eval__at_start="false", eval__at_end="false")
        runs[on] = list(read_records(tmp_path / on / "metrics.jsonl"))
    on, off = runs["true"], runs["false"]
    assert on[0]["reward/mean"] == off[0]["reward/mean"]  # step 1 sampled the same completions
    assert on[0]["sampler/logprob_abs_diff_max"] > 0.002  # the gap is wider than the clip
    assert "sampler/importance_weight_mean" in on[0] and "sampler/importance_weight_mean" not in off[0]
    assert on[0]["clip/low_frac"] + on[0]["clip/high_frac"] == 0
    assert off[0]["clip/low_frac"] + off[0]["clip/high_frac"] > 0
    assert on[1]["reward/mean"] != off[1]["reward/mean"] or on[1]["loss"] != off[1]["loss"]  # different updates


def test_resume_in_bf16_compute_reproduces_an_uninterrupted_run(tiny_model_dir, arithmetic_jsonl, tmp_path):
    from tests.test_trainer import learning_metrics

    common = dict(rollout__temperature=0.9, eval__at_start="false", eval__at_end="false", model__compute_dtype="bfloat16")
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "straight", max_steps=4, **common)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "split", max_steps=2, **common)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "split", max_steps=4, resume="true", **common)
    assert learning_metrics(tmp_path / "straight") == learning_metrics(tmp_path / "split")
    assert list(read_records(tmp_path / "straight" / "traces.jsonl")) == list(read_records(tmp_path / "split" / "traces.jsonl"))


@pytest.fixture(scope="module")
def bf16_reference(tiny_model_dir, tmp_path_factory):
    """(data file, recipe in bf16 compute, the folder of an uninterrupted run of it through the CLI)."""
    data, recipe, reference = reference_run(tiny_model_dir, tmp_path_factory.mktemp("bf16-crash"), "model:\n  compute_dtype: bfloat16\n")
    assert json.loads((reference / "summary.json").read_text())["precision"]["compute_dtype"] == "bfloat16"
    return data, recipe, reference


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "SIGINT"])
def test_an_interrupted_bf16_compute_run_resumes_exactly(tiny_model_dir, bf16_reference, tmp_path, spawn, signum):
    """kill -9 mid-step 3 (resume from the step-2 checkpoint), or Ctrl-C during step 3 (the step
    finishes, a checkpoint is written, the printed command resumes): the same run either way."""
    import os

    from tests.test_crash_resume import run_printed_command, the_resume_line

    data, recipe, reference = bf16_reference
    run = tmp_path / "run"
    child = spawn(command(tiny_model_dir, data, recipe, run), tmp_path, hold_step=3)
    child.wait_until_held()
    if signum == signal.SIGKILL:
        child.proc.send_signal(signum)
        assert child.finish() == -signal.SIGKILL and steps_in(run) == [1, 2]
        proc = subprocess.run(command(tiny_model_dir, data, recipe, run, resume="true"), cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
    else:
        os.killpg(child.proc.pid, signum)
        child.wait_until(lambda: "SIGINT: stopping after step 3" in child.stderr, "the notice")
        child.release()
        assert child.finish() == 128 + signum and steps_in(run) == [1, 2, 3]
        run_printed_command(the_resume_line(child.stderr, "interrupted by SIGINT: stopped after step 3 with checkpoint "))
    assert_same_run(run, reference)


# ----------------------------------------------------------------------------- the other commands that run the model


def test_multi_turn_rollouts_sample_on_the_bf16_copy(tiny_model_dir, arithmetic_jsonl, tmp_path):
    from rl_reasoning.multiturn import MultiTurnEngine
    from rl_reasoning.trainer import GRPOTrainer
    from tests.test_tools import tool_overrides

    cfg = load_config(None, tool_overrides(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", "rollout.tools=[calculator]",
                                           "rollout.max_new_tokens=16", "max_steps=1", "eval.at_start=false",
                                           "model.compute_dtype=bfloat16",
                                           "rewards=[{name: 'tests.reward_fns:char_variety'}, {name: math, weight: 0.0}]"))
    trainer = GRPOTrainer(cfg, quiet=True)
    trainer.train()
    assert isinstance(trainer.engine, MultiTurnEngine)
    assert trainer.engine.model is trainer.sampling_copy.model  # the inner engine decoded on the bf16 copy
    assert next(trainer.engine.model.parameters()).dtype == torch.bfloat16
    (m,) = read_records(tmp_path / "run" / "metrics.jsonl")
    assert "tools/use_frac" in m and m["sampler/logprob_abs_diff"] > 0


def test_eval_and_shrink_compute_in_the_chosen_dtype(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys):
    from rl_reasoning import cli
    from rl_reasoning.evaluation import evaluate_model
    from tests.test_shrink import HEAL_FAST

    overrides = [f"model.name={tiny_model_dir}", "data.source=jsonl", f"data.path={arithmetic_jsonl}", "data.eval_size=4",
                 "rollout.max_new_tokens=6", "model.compute_dtype=bfloat16", "rewards=[{name: 'tests.reward_fns:char_variety'}]"]
    result = evaluate_model(load_config(None, overrides))
    assert result["settings"]["compute_dtype"] == "bfloat16" and result["metrics"]["num_problems"] == 4

    out = tmp_path / "healed"
    assert cli.main(["shrink", "--model", str(tiny_model_dir), "--out", str(out), "--keep", "1", "--compute-dtype", "bfloat16",
                     *HEAL_FAST]) == 0, capsys.readouterr().err
    assert "bfloat16 compute" in capsys.readouterr().out
    heal = json.loads((out / "shrink.json").read_text())["heal"]
    assert heal["settings"]["compute_dtype"] == "bfloat16" and heal["kl_last"] < heal["kl_first"]
    assert all(t.dtype == torch.float32 for t in load_file(str(out / "model.safetensors")).values())  # fp32 weights saved


@pytest.mark.parametrize("content", ["[" * 100_000, '{"k": {"fp32_ms": NaN, "bf16_ms": 1, "bf16_speedup": 1}}', "\xff\xfe",
                                     '{"k": {"fp32_ms": true, "bf16_ms": -1, "bf16_speedup": 1e999}}', "[1, 2]"])
def test_a_hostile_probe_cache_is_probed_again_and_rewritten(monkeypatch, tmp_path, content):
    monkeypatch.setattr(precision_module, "machine_signature", lambda hidden, intermediate: "k")
    monkeypatch.setattr(precision_module, "probe_cpu", lambda *a, **k: {"fp32_ms": 1.0, "bf16_ms": 4.0, "bf16_speedup": 0.25})
    (tmp_path / "precision_probe.json").write_bytes(content.encode("utf-8", "surrogateescape") if content != "\xff\xfe" else b"\xff\xfe")
    result = precision_module.cached_probe(64, 96, tmp_path)
    assert result == {"fp32_ms": 1.0, "bf16_ms": 4.0, "bf16_speedup": 0.25, "cached": False}
    assert json.loads((tmp_path / "precision_probe.json").read_text())["k"]["bf16_ms"] == 4.0
    assert [p.name for p in tmp_path.iterdir()] == ["precision_probe.json"]  # no temporary file left behind


def test_an_accelerate_mixed_precision_config_decides_and_a_contradiction_is_an_error(tiny_model_dir, arithmetic_jsonl, tmp_path,
                                                                                     monkeypatch):
    from accelerate.state import AcceleratorState

    from rl_reasoning.errors import UserError

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one state per process; this test's launch differs
    try:
        _run_under_bf16_launch(tiny_model_dir, arithmetic_jsonl, tmp_path, UserError)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def _run_under_bf16_launch(tiny_model_dir, arithmetic_jsonl, tmp_path, UserError):
    _, summary = train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=1, eval__at_start="false", eval__at_end="false")
    assert summary["precision"]["compute_dtype"] == "bfloat16" and "mixed_precision bf16" in summary["precision"]["reason"]
    with pytest.raises(UserError, match="model.compute_dtype: float32, but the accelerate config sets mixed_precision: bf16"):
        train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run2", max_steps=1, model__compute_dtype="float32")


def test_lora_in_bf16_compute_refreshes_only_the_adapters(tiny_model_dir, arithmetic_jsonl, tmp_path):
    trainer, _ = train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=2, model__compute_dtype="bfloat16", lora__r=4,
                       eval__at_start="false", eval__at_end="false")
    policy = trainer.accelerator.unwrap_model(trainer.model)
    assert trainer.sampling_copy.version == 1  # refreshed lazily: step 2 sampled after one optimizer step
    copied = dict(trainer.sampling_copy.refreshed(policy, trainer.update.optimizer_steps).named_parameters())
    for name, p in policy.named_parameters():
        assert copied[name].dtype == torch.bfloat16
        assert torch.equal(copied[name], p.detach().bfloat16()), name  # adapters refreshed, the frozen base as loaded
    assert any("lora_" in n for n, p in policy.named_parameters() if p.requires_grad)
