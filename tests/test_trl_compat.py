"""Our rewards work unchanged as `reward_funcs` of TRL's GRPOTrainer (one step, tiny model)."""

from __future__ import annotations


def test_one_trl_grpo_step_with_our_rewards(tiny_model_dir, tmp_path):
    import datasets  # required dependencies (imported here: trl is slow to import)
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewards import format_reward, math_reward

    calls = {"math": 0, "format": 0}

    def counted(fn, name):
        def wrapper(completions, **kwargs):
            calls[name] += 1
            return fn(completions, **kwargs)

        wrapper.__name__ = name
        return wrapper

    data = datasets.Dataset.from_list([{"prompt": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(8)])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = trl.GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        gradient_checkpointing=False,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[counted(math_reward, "math"), counted(format_reward, "format")],
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
    )
    trainer.train()
    assert calls["math"] >= 1 and calls["format"] >= 1
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert any("math" in k for k in logged) and any("format" in k for k in logged)
