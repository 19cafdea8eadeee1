"""Shared fixtures: a tiny random Llama-style model and a small BPE tokenizer, built locally (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "<think>3 + 4 = 7, let me check: 7 - 4 = 3.</think> <answer>7</answer>",
    "Calculate 12 - 5. What is 9 * 8? The answer is 72.",
    "wait, let me re-check the sum. 0 1 2 3 4 5 6 7 8 9 10 11 12",
    "A conversation between User and Assistant. The user asks a question.",
] * 20


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def save_tiny(path: Path, make_model) -> Path:
    """The test tokenizer and `make_model(vocab_size)`, built under seed 0, saved as an HF checkpoint in `path`."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    make_model(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved HF checkpoint directory: tokenizer + random 2-layer Llama."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer()
    model = build_tiny_model(len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_moe_dir(tmp_path_factory) -> Path:
    """A saved tiny Mixtral (4 experts, top-2) with the same tokenizer: MoE paths of the trainer."""
    from transformers import MixtralConfig, MixtralForCausalLM

    return save_tiny(tmp_path_factory.mktemp("tiny-mixtral"), lambda vocab: MixtralForCausalLM(MixtralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.02, tie_word_embeddings=True, pad_token_id=0,
        bos_token_id=1, eos_token_id=2)))


@pytest.fixture()
def tiny(tiny_model_dir):
    """(model, tokenizer) freshly loaded from the tiny checkpoint."""
    from rl_reasoning.models import load_model

    loaded = load_model(str(tiny_model_dir))
    return loaded.model, loaded.tokenizer


@pytest.fixture()
def arithmetic_jsonl(tmp_path) -> Path:
    path = tmp_path / "problems.jsonl"
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(10) for b in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def vllm():
    """Skips the test when vLLM is missing, or fails it under RL_REASONING_REQUIRE_VLLM=1 (tests/capabilities.py).
    Session-scoped, so it runs before the module fixtures that start an engine."""
    from tests.capabilities import require_vllm

    require_vllm()


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose head size vLLM's CPU attention supports (64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return save_tiny(tmp_path_factory.mktemp("tiny-llama-vllm"), lambda vocab: LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)))
