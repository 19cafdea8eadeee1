"""`rl-reasoning shrink`: layer choice and its errors, bit-exact pruning, cached decoding after a prune
(layer 0 dropped included), the KL on hand-built tensors, healing on the tiny model, and one GRPO
step on the shrunk model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl_reasoning import cli
from rl_reasoning.errors import UserError
from rl_reasoning.shrink import block_angular_distances, choose_layers, forward_kl, healing_prompts, most_redundant_block, prune_layers
from tests.conftest import build_tiny_model, build_tokenizer

HEAL_FAST = ["--steps", "6", "--lr", "1e-3", "--batch-size", "4", "--prompts", "24", "--max-new-tokens", "6", "--log-every", "3"]


@pytest.fixture(scope="module")
def deep_tiny_dir(tmp_path_factory) -> Path:
    """The tiny Llama of conftest with 4 layers instead of 2, so that there is something to keep."""
    from transformers import LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama-4")
    tokenizer = build_tokenizer()
    config = build_tiny_model(len(tokenizer)).config
    config.num_hidden_layers = 4
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def shrink(model_dir, out, *flags) -> int:
    return cli.main(["shrink", "--model", str(model_dir), "--out", str(out), *flags])


# --- choosing layers -----------------------------------------------------------------------------


def test_layer_choice():
    assert choose_layers(12, "every_other", None) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice for BERT-base
    assert choose_layers(30, "every_other", None) == [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]
    assert choose_layers(2, "every_other", None) == [0]
    assert choose_layers(30, "0-19,29", None) == list(range(20)) + [29]
    assert choose_layers(4, " 1, 3 ", None) == [1, 3]
    assert choose_layers(30, None, 10) == list(range(20))


@pytest.mark.parametrize("keep, drop_last, message", [
    ("0,4", None, "--keep: layer 4 is out of range"),
    ("0,1,1", None, "--keep: layer 1 is listed twice"),
    ("2,1", None, "--keep: list layers in increasing order"),
    (",", None, "--keep: no layers given"),
    ("0-3", None, "--keep: keeps all 4 layers"),
    ("a", None, "--keep: 'a' is not a layer index"),
    (None, 4, "--drop-last 4: must be between 1 and 3"),
    (None, 0, "--drop-last 0: must be between 1 and 3"),
    ("0", 1, "exactly one of --keep, --drop-last and --drop-block"),
    (None, None, "exactly one of --keep, --drop-last and --drop-block"),
])
def test_bad_layer_choices_are_errors_naming_the_flag(keep, drop_last, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        choose_layers(4, keep, drop_last)


@pytest.mark.parametrize("flags, message", [
    (["--keep", "0,4"], "error: --keep: layer 4 is out of range (the model has 4 layers, 0-3)"),
    (["--keep", "1,1"], "error: --keep: layer 1 is listed twice"),
    (["--keep", ""], "error: --keep: no layers given"),
    (["--keep", "every_other", "--drop-last", "1"], "error: shrink: give exactly one of --keep, --drop-last and --drop-block"),
    (["--keep", "0", "--drop-block", "1"], "error: shrink: give exactly one of --keep, --drop-last and --drop-block"),
    ([], "error: shrink: give exactly one of --keep, --drop-last and --drop-block"),
    (["--drop-block", "4"], "error: --drop-block 4: must be between 1 and 3 (the model has 4 layers)"),
    (["--drop-block", "0"], "error: --drop-block 0: must be between 1 and 3 (the model has 4 layers)"),
    (["--drop-last", "1", "--steps", "0"], "error: --steps must be >= 1"),
])
def test_bad_flags_exit_2_with_one_line(deep_tiny_dir, tmp_path, capsys, flags, message):
    assert shrink(deep_tiny_dir, tmp_path / "s", *flags) == 2
    err = capsys.readouterr().err
    assert err.strip() == message and err.count("\n") == 1


def test_non_empty_out_and_unsupported_models_are_one_line_errors(deep_tiny_dir, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert shrink(deep_tiny_dir, tmp_path / "full", "--keep", "0") == 2
    assert capsys.readouterr().err.strip().endswith("is not empty; choose a new directory")

    gpt2 = tmp_path / "gpt2"  # decoder-only, but its layers are transformer.h, not model.layers
    GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=32, n_layer=2, n_head=2)).save_pretrained(gpt2)
    build_tokenizer().save_pretrained(gpt2)
    capsys.readouterr()  # transformers' "Writing model shards" bar, when no earlier test has quieted it
    assert shrink(gpt2, tmp_path / "g", "--keep", "0", "--no-heal") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shrink: cannot find the decoder layers of this GPT2LMHeadModel") and err.count("\n") == 1


def test_the_most_redundant_block_is_the_smallest_distance():
    assert most_redundant_block(6, [0.3, 0.1, 0.2, 0.4]) == [0, 4, 5]  # n = 3: starts 0-3, layers 1-3 go
    assert most_redundant_block(4, [0.2, 0.2, 0.3, 0.5]) == [1, 2, 3]  # n = 1; a tie goes to the first
    assert most_redundant_block(30, [0.5] * 24 + [0.1]) == list(range(24))  # the last block may go


@pytest.fixture(scope="module")
def tiny_with_identity_layers(deep_tiny_dir, tmp_path_factory) -> Path:
    """deep_tiny with layers 1 and 2 made the identity (attention and MLP write nothing)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(deep_tiny_dir)
    with torch.no_grad():
        for i in (1, 2):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    path = tmp_path_factory.mktemp("tiny-identity")
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def test_angular_distances_match_the_hidden_states_and_find_identity_layers(tiny_with_identity_layers):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_with_identity_layers).eval()
    tok = build_tokenizer()
    common = tok.encode("Solve this: ")  # a shared opening, as a chat template gives every sequence
    sequences = [common + tok.encode(t) for t in ("What is 9 * 8?", "Calculate 12 - 5 and then add 3.", "ok")]
    got = block_angular_distances(model, sequences, tok.pad_token_id, block=2, batch_size=2)  # padded batches
    assert got["shared_prefix"] == len(common) and got["tokens"] == sum(len(s) - len(common) for s in sequences)
    assert len(got["by_start"]) == 3 and len(got["per_layer"]) == 4

    # reference: one sequence at a time, unpadded, from output_hidden_states; with the final norm made
    # the identity, the last hidden state is the last layer's output (transformers puts the normed one there)
    reference_model = copy.deepcopy(model)
    reference_model.model.norm = torch.nn.Identity()
    with torch.no_grad():
        hidden = [reference_model(torch.tensor([s]), output_hidden_states=True).hidden_states for s in sequences]

    def reference(a, b):
        total = 0.0
        for hs in hidden:
            cos = torch.nn.functional.cosine_similarity(hs[a][0, len(common):].double(), hs[b][0, len(common):].double(), dim=-1)
            total += float((torch.arccos(cos.clamp(-1, 1)) / torch.pi).sum())
        return total / got["tokens"]

    for start in range(3):
        assert got["by_start"][start] == pytest.approx(reference(start, start + 2), abs=2e-5)
    for layer in range(4):
        assert got["per_layer"][layer] == pytest.approx(reference(layer, layer + 1), abs=2e-5)
    assert got["by_start"][1] < 1e-4 and got["per_layer"][1] < 1e-4 and got["per_layer"][2] < 1e-4  # identity layers
    assert min(got["by_start"][0], got["by_start"][2], got["per_layer"][0], got["per_layer"][3]) > 0.01
    assert not model.model.layers[0]._forward_pre_hooks and not model.model.layers[3]._forward_hooks  # hooks removed


def test_drop_block_drops_the_layers_that_change_nothing(tiny_with_identity_layers, tmp_path, capsys):
    out = tmp_path / "s"
    assert shrink(tiny_with_identity_layers, out, "--drop-block", "2", "--no-heal", "--prompts", "6", "--max-new-tokens", "4") == 0, \
        capsys.readouterr().err
    assert "drops layer(s) 1-2" in capsys.readouterr().out
    summary = json.loads((out / "shrink.json").read_text())
    assert summary["layers"]["kept"] == [0, 3] and summary["layers"]["dropped"] == [1, 2]
    assert summary["layers"]["angular_distance"]["block"] == 2 and summary["heal"] is None
    assert set(summary["seconds"]) == {"load", "sample", "measure", "prune", "save"}
    # a model with the identity layers dropped computes exactly what the source computes
    from transformers import AutoModelForCausalLM

    source, student = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (tiny_with_identity_layers, out))
    ids = torch.tensor([build_tokenizer().encode("Calculate 12 - 5.")])
    assert torch.equal(student(ids).logits, source(ids).logits)  # the dropped layers added exact zeros


# --- pruning -------------------------------------------------------------------------------------


def test_pruned_checkpoint_holds_the_kept_layers_bit_for_bit_and_loads_everywhere(deep_tiny_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from rl_reasoning.models import load_model

    out = tmp_path / "s"
    assert shrink(deep_tiny_dir, out, "--keep", "1,3", "--no-heal") == 0, capsys.readouterr().err
    source, pruned = load_file(str(deep_tiny_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    expected = {k.replace("layers.1.", "layers.0.").replace("layers.3.", "layers.1."): v
                for k, v in source.items() if ".layers." not in k or ".layers.1." in k or ".layers.3." in k}
    assert set(pruned) == set(expected)
    assert all(torch.equal(pruned[k], expected[k]) for k in expected)  # bit for bit (equal is exact)

    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 64
    summary = json.loads((out / "shrink.json").read_text())
    assert summary["layers"] == {"source": 4, "kept": [1, 3], "dropped": [0, 2], "angular_distance": None} and summary["heal"] is None
    assert summary["parameters"]["after"] < summary["parameters"]["before"]
    assert set(summary["seconds"]) == {"prune", "save"}

    hf = AutoModelForCausalLM.from_pretrained(out)
    ours = load_model(str(out))
    for model in (hf, ours.model):
        assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert ours.tokenizer.encode("What is 9 * 8?") == build_tokenizer().encode("What is 9 * 8?")  # tokenizer copied
    ids = torch.tensor([ours.tokenizer.encode("Calculate 12 - 5.")])
    assert torch.equal(hf(ids).logits, ours.model(ids).logits)


def test_layer_types_are_cut_with_the_layers():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, layer_types=types, sliding_window=4)
    torch.manual_seed(0)
    pruned = prune_layers(Qwen2ForCausalLM(config), [1, 2])
    assert pruned.config.num_hidden_layers == 2 and pruned.config.layer_types == ["sliding_attention", "full_attention"]
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]


def full_and_cached_logits(model, ids: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, V) of one full forward, and of a prefill of `prompt_len` tokens followed by one
    token at a time on our PreallocatedCache."""
    from rl_reasoning.kv_cache import PreallocatedCache

    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :prompt_len], past_key_values=PreallocatedCache(room=ids.shape[1]), use_cache=True)
        steps = [out.logits]
        for t in range(prompt_len, ids.shape[1]):
            out = model(input_ids=ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    return full, torch.cat(steps, dim=1)


@pytest.mark.parametrize("keep", [[1, 3], [0, 2], [3]])  # [1, 3] and [3] drop layer 0
def test_cached_decoding_matches_a_full_forward_after_pruning(deep_tiny_dir, keep):
    from rl_reasoning.config import RolloutConfig
    from rl_reasoning.models import eos_token_ids, load_model
    from rl_reasoning.rollout import RolloutEngine

    loaded = load_model(str(deep_tiny_dir))
    pruned = prune_layers(loaded.model, keep).eval()
    ids = torch.randint(3, len(loaded.tokenizer), (2, 14), generator=torch.Generator().manual_seed(0))
    full, cached = full_and_cached_logits(pruned, ids, prompt_len=5)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)

    # the rollout engine (left padding, G > 1, compaction): its log-probs are those of a full forward
    tok = loaded.tokenizer
    engine = RolloutEngine(pruned, tok, eos_token_ids(pruned, tok), tok.pad_token_id)
    prompts = [tok.encode("What is 9 * 8?"), tok.encode("Calculate 12 - 5. The answer is")]
    params = RolloutConfig(num_generations=2, max_new_tokens=8, temperature=1.0, packed_weights=False)
    batch = engine.generate(prompts, params, torch.Generator().manual_seed(0))
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)  # (N, Lp + Lc)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    with torch.no_grad():
        logits = pruned(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    Lp = batch.prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, Lp - 1 : -1], dim=-1).gather(-1, batch.completion_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(logp * batch.completion_mask, batch.logprobs, atol=1e-4, rtol=1e-4)


def test_the_cache_check_catches_a_naive_slice(deep_tiny_dir):
    """Slicing model.layers without renumbering layer_idx raises nothing, and with layer 0 dropped
    cached decoding silently differs (algorithms.md §4): the check above would catch it."""
    from rl_reasoning.models import load_model

    naive = copy.deepcopy(load_model(str(deep_tiny_dir)).model).eval()
    naive.model.layers = torch.nn.ModuleList([naive.model.layers[i] for i in (1, 3)])
    ids = torch.randint(3, 300, (2, 14), generator=torch.Generator().manual_seed(0))
    full, cached = full_and_cached_logits(naive, ids, prompt_len=5)
    assert (cached - full).abs().max() > 1e-3


def test_a_tiny_mixtral_shrinks_and_decodes_with_the_cache(tiny_moe_dir, tmp_path, capsys):
    from rl_reasoning.models import load_model

    out = tmp_path / "moe"
    assert shrink(tiny_moe_dir, out, "--keep", "1", "--no-heal") == 0, capsys.readouterr().err
    source, pruned = load_model(str(tiny_moe_dir)).model, load_model(str(out)).model
    assert type(pruned).__name__ == "MixtralForCausalLM" and len(pruned.model.layers) == 1
    assert all(torch.equal(a, b) for a, b in zip(pruned.model.layers[0].state_dict().values(), source.model.layers[1].state_dict().values()))
    ids = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    full, cached = full_and_cached_logits(pruned.eval(), ids, prompt_len=4)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


# --- healing -------------------------------------------------------------------------------------


def test_forward_kl_against_closed_form():
    p = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])  # base
    q = torch.tensor([[0.25, 0.25, 0.5], [0.1, 0.2, 0.7]])  # student
    kl = forward_kl(p.log() + 3.0, q.log() - 1.0)  # (2,) from logits: a shift does not change the distribution
    ln2 = torch.log(torch.tensor(2.0)).item()
    torch.testing.assert_close(kl, torch.tensor([0.5 * ln2 - 0.25 * ln2, 0.0]))  # sum p ln(p/q); 0 when equal
    base, student = torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.5]])
    forward = 0.9 * torch.log(torch.tensor(1.8)).item() + 0.1 * torch.log(torch.tensor(0.2)).item()  # KL(base || student)
    reverse = 0.5 * torch.log(torch.tensor(0.5 / 0.9)).item() + 0.5 * torch.log(torch.tensor(5.0)).item()  # KL(student || base)
    assert forward_kl(base.log(), student.log()).item() == pytest.approx(forward, abs=1e-6)
    assert abs(forward - reverse) > 0.1  # so the direction is tested


def test_healing_prompts_mix_tasks_and_skip_excluded_questions():
    first = healing_prompts(12, seed=0, exclude=set())
    assert len({p["task"] for p in first}) >= 4  # a mixture, not one task
    skipped = {first[0]["question"], first[3]["question"]}
    again = healing_prompts(12, seed=0, exclude=skipped)
    assert len(again) == 12 and not skipped & {p["question"] for p in again}
    assert [p["question"] for p in again[:10]] == [p["question"] for i, p in enumerate(first) if i not in (0, 3)]


def test_healing_lowers_the_kl_to_the_base(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data: {{source: file, path: {arithmetic_jsonl}, eval_size: 4}}\nrewards: [{{name: 'tests.reward_fns:has_letter_e'}}]\n")
    out = tmp_path / "healed"
    assert shrink(tiny_model_dir, out, "--keep", "1", "--exclude-recipe", str(recipe), *HEAL_FAST) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "heal step 3/6" in printed and "heal step 6/6" in printed
    heal = json.loads((out / "shrink.json").read_text())["heal"]
    assert heal["sequences"] == {"train": 22, "held_aside": 2} and len(heal["kl_curve"]) == 6
    assert heal["excluded_questions"] == 4  # the recipe's held-out questions
    assert heal["held_aside_kl_after"] < 0.5 * heal["held_aside_kl_before"]
    assert heal["kl_last"] < heal["kl_first"]
    rows = [json.loads(line) for line in (out / "heal_text.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and len({r["task"] for r in rows}) >= 4
    assert all(r["prompt"].startswith("<|im_start|>user\n") for r in rows)  # the source's chat template
    summary = json.loads((out / "shrink.json").read_text())
    assert set(summary["seconds"]) == set(summary["cpu_seconds"]) == {"prune", "sample", "heal", "save"}

    from rl_reasoning.models import load_model

    source, healed = load_model(str(tiny_model_dir)).model, load_model(str(out)).model
    assert not torch.equal(healed.model.layers[0].mlp.up_proj.weight, source.model.layers[1].mlp.up_proj.weight)  # it trained


def test_the_shrunk_model_trains_with_grpo(deep_tiny_dir, arithmetic_jsonl, tmp_path, capsys):
    from tests.test_trainer import train

    student = tmp_path / "student"
    assert shrink(deep_tiny_dir, student, "--keep", "every_other", "--no-heal") == 0, capsys.readouterr().err
    _, summary = train(student, arithmetic_jsonl, tmp_path / "run", max_steps=1, eval__at_start="false", eval__at_end="false")
    before = load_file(str(student / "model.safetensors"))
    after = load_file(str(Path(summary["final_checkpoint"]) / "model.safetensors"))
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
