"""`rl-reasoning shrink`: a smaller student made offline by dropping decoder layers, then healed.

    rl-reasoning shrink --model smollm2-135m-instruct --out runs/shrunk --keep every_other
    rl-reasoning shrink --model runs/x/checkpoints/step-000010 --out runs/s --keep 0-19,29 --no-heal
    rl-reasoning shrink --model smollm2-135m-instruct --out runs/s --drop-last 10 --steps 200
    rl-reasoning shrink --model smollm2-135m-instruct --out runs/s --drop-block 6

1. Prune: the source (a built-in name, a checkpoint or an HF directory, read by `models.load_model`)
   keeps the decoder layers chosen by `--keep` or `--drop-last`, or measured by `--drop-block N`:
   the N consecutive layers whose input and output residual streams are closest in angular
   distance, arccos(cos(x_l, x_{l+N})) / pi, over the healing text past the prefix all its
   sequences share, held-aside part excluded (Gromov et al.). The student is built from the
   source's config with `num_hidden_layers` (and `layer_types`, where the config has it) cut to
   the kept layers, so every layer's `self_attn.layer_idx` is its new position (a stale index
   breaks cached decoding: docs/distillation.md); the kept layers' weights, the embeddings, the
   final norm and the head are copied bit for bit. Only Llama-like decoders (`model.layers`:
   Llama/SmolLM2, Mistral, Mixtral, Qwen2, ...) are supported.
2. Heal (unless `--no-heal`): logit distillation from the *base* (the un-pruned source, not an
   RL-trained teacher). Text = prompts from a broad reasoning-gym mixture (`HEAL_TASKS`, a seed
   range of its own; `--exclude-recipe R` also drops R's held-out questions) in the source's
   chat template, each followed by one continuation the base samples itself (T = 1, our rollout
   engine). Loss = forward KL(base || student) over the full vocabulary at every real token
   position, token mean; AdamW, constant lr, gradient norm clipped at 1, fp32 master weights with
   the matmuls in `--compute-dtype` (auto: bf16 where this machine computes it faster, precision.py;
   the sampling and the KL measurements run in it too). A tenth of the
   sequences (at most 32) is held aside: its KL before and after healing goes to `shrink.json`.
3. Write: `--out` is a normal HF checkpoint (model, tokenizer, generation config) that `train`,
   `eval` and `distill` accept, plus `shrink.json` (layers kept, with `--drop-block` every angular
   distance, parameters before/after, the
   healing KL curve, wall and CPU seconds of each stage) and `heal_text.jsonl` (the healing text).

Departures from the literature (algorithms.md §4):
- DistilBERT initialises from every other teacher layer too (its script keeps BERT's
  0,2,4,7,9,11: the first and the last, evenly spaced; `every_other` picks the same way), but
  trains with soft targets + MLM + hidden-state cosine on its pretraining corpus; here only the
  soft-target (logit) term, on a few hundred sequences.
- Minitron also heals with logit-only KL, but on ~100B tokens, and chooses what to prune by
  importance estimates; here the layers are given by the user and healing is a few hundred steps.
- Gromov et al. drop a contiguous block chosen by angular distance (or the deepest layers but the
  last, `--keep 0-19,29` for 30 layers) and heal with QLoRA on C4; here healing trains every weight.
  They measure the distance at each sequence's final token; `--drop-block` averages it over every
  token of the healing text after the chat template's shared opening (a few hundred short
  sequences: more positions), taking the residual stream entering each layer and the last
  layer's output (before the final norm).
The healed student is a starting point for on-policy distillation or RL, not a finished model.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: `rl-reasoning --help` stays fast
    import torch

# A broad reasoning-gym mixture (equal weights): arithmetic, word problems, counting, logic, dates,
# string manipulation. All generate offline and quickly; none is a recipe's task config.
HEAL_TASKS = (
    "basic_arithmetic", "chain_sum", "gsm_symbolic", "simple_equations", "fraction_simplification", "leg_counting",
    "letter_counting", "family_relationships", "syllogism", "calendar_arithmetic", "time_intervals", "spell_backward",
)
HEAL_SEED_OFFSET = 2_000_033  # healing prompts use seeds apart from training (seed) and held-out (seed + 1_000_003) ones
MAX_VAL_SEQUENCES = 32
SAMPLE_BATCH = 16  # prompts the base continues together
ONE_CHOICE = "shrink: give exactly one of --keep, --drop-last and --drop-block"


@dataclass
class ShrinkStats:
    seconds: dict = field(default_factory=dict)  # stage -> wall seconds
    cpu_seconds: dict = field(default_factory=dict)  # stage -> user + system CPU seconds of this process


# --- 1. choosing and dropping layers ------------------------------------------------------------


def parse_layer_indices(spec: str, flag: str, hint: str = "") -> list[int]:
    """Layer indices from "0,2,4" or "0-19,29", in the order given (empty parts skipped); a part that
    is neither an index nor a range a-b is a UserError naming `flag`."""
    indices = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            indices.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
        except ValueError:
            raise UserError(f"{flag}: {part!r} is not a layer index or a range a-b{hint}") from None
    return indices


def choose_layers(num_layers: int, keep: str | None, drop_last: int | None) -> list[int]:
    """The kept layer indices, increasing. `keep` is "every_other" (ceil(L/2) layers evenly spaced
    from the first to the last: 0,2,4,7,9,11 of 12) or a list like "0,2,4" / "0-19,29"; `drop_last`
    drops the N deepest layers. Bad input is a UserError naming the flag."""
    if (keep is None) == (drop_last is None):
        raise UserError(ONE_CHOICE)
    if drop_last is not None:
        if not 1 <= drop_last < num_layers:
            raise UserError(f"--drop-last {drop_last}: must be between 1 and {num_layers - 1} (the model has {num_layers} layers)")
        return list(range(num_layers - drop_last))
    if keep.strip() == "every_other":
        n = math.ceil(num_layers / 2)
        kept = [0] if n == 1 else [int(i * (num_layers - 1) / (n - 1) + 0.5) for i in range(n)]
    else:
        kept = parse_layer_indices(keep, "--keep", " (or use --keep every_other)")
        if not kept:
            raise UserError("--keep: no layers given")
        for a, b in zip(kept, kept[1:]):
            if a == b:
                raise UserError(f"--keep: layer {a} is listed twice")
            if b < a:
                raise UserError(f"--keep: list layers in increasing order ({a} comes before {b})")
        bad = [i for i in kept if not 0 <= i < num_layers]
        if bad:
            raise UserError(f"--keep: layer {bad[0]} is out of range (the model has {num_layers} layers, 0-{num_layers - 1})")
    if len(kept) == num_layers:
        raise UserError(f"--keep: keeps all {num_layers} layers; nothing would be dropped")
    return kept


def block_angular_distances(model, sequences: list[list[int]], pad_id: int, block: int, batch_size: int) -> dict:
    """Mean angular distance arccos(cos(x_l, x_{l+n})) / pi between the residual stream x_l entering
    layer l and x_{l+n} entering layer l + n (x_L: the last layer's output, before the final norm),
    for n = `block` ("by_start": one value per start l = 0..L-block) and n = 1 ("per_layer"),
    averaged over the tokens of `sequences` after the prefix they all share (a chat template's
    fixed opening would add the same positions to every sequence). Forward passes only, no LM
    head; full precision (round for display)."""
    import os

    import torch

    from .engine import left_pad, positions_from_mask

    layers = decoder_layers(model)
    num_layers = len(layers)
    device = next(model.parameters()).device
    shared = len(os.path.commonprefix(sequences)) if len(sequences) > 1 else 0
    captured: list = [None] * (num_layers + 1)

    def capture_input(index):
        def hook(module, args, kwargs):
            captured[index] = args[0] if args else kwargs["hidden_states"]
        return hook

    def capture_last_output(module, args, output):
        captured[num_layers] = output[0] if isinstance(output, tuple) else output

    sums = {"by_start": torch.zeros(num_layers - block + 1, dtype=torch.float64),
            "per_layer": torch.zeros(num_layers, dtype=torch.float64)}
    tokens = 0
    handles = []
    try:
        handles = [layer.register_forward_pre_hook(capture_input(i), with_kwargs=True) for i, layer in enumerate(layers)]
        handles.append(layers[-1].register_forward_hook(capture_last_output))
        for start in range(0, len(sequences), batch_size):
            ids, mask = left_pad(sequences[start : start + batch_size], pad_id)  # (B, T)
            ids, mask = ids.to(device), mask.to(device)
            positions = positions_from_mask(mask)  # (B, T)
            with torch.no_grad():
                model.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            measured = mask.bool() & (positions >= shared)  # (B, T)
            states = [x[measured] for x in captured]  # L + 1 of (M, H)
            for key, n in (("by_start", block), ("per_layer", 1)):
                for layer in range(num_layers - n + 1):
                    cos = torch.nn.functional.cosine_similarity(states[layer].double(), states[layer + n].double(), dim=-1)  # (M,)
                    sums[key][layer] += (torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).sum()
            tokens += int(measured.sum())
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise UserError("--drop-block: the healing text has no tokens past the prefix all its sequences share; raise --prompts")
    return {"block": block, "tokens": tokens, "shared_prefix": shared, **{k: [v / tokens for v in sums[k].tolist()] for k in sums}}


def _ranges(layers: list[int]) -> str:
    """[3, 4, 5] -> "3-5"; [7] -> "7" (one contiguous block)."""
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


def most_redundant_block(num_layers: int, by_start: list[float]) -> list[int]:
    """The kept layers when the block with the smallest distance goes: by_start[l] is the distance
    across layers l..l+n-1 (n = num_layers + 1 - len(by_start)); the first start wins a tie."""
    n = num_layers + 1 - len(by_start)
    start = min(range(len(by_start)), key=lambda i: by_start[i])
    return [i for i in range(num_layers) if not start <= i < start + n]


def decoder_layers(model) -> torch.nn.ModuleList:
    """`model.model.layers` of a Llama-like causal LM, checked against `config.num_hidden_layers`."""
    import torch

    layers = getattr(getattr(model, "model", None), "layers", None)
    n = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != n:
        raise UserError(f"shrink: cannot find the decoder layers of this {type(model).__name__} "
                        "(only Llama-like models with model.layers are supported)")
    return layers


def prune_layers(model, keep: list[int]):
    """A new model of the same class holding the layers `keep` of `model` (weights copied bit for
    bit, own storage), built from a config cut to those layers, so every index inside it
    (`self_attn.layer_idx`, the cache's layer count, per-layer types) is its new position."""
    from transformers import AutoModelForCausalLM

    decoder_layers(model)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    new_index = {old: new for new, old in enumerate(keep)}
    prefix = "model.layers."
    state = {}
    for key, value in model.state_dict().items():
        if not key.startswith(prefix):
            state[key] = value
            continue
        old, rest = key[len(prefix):].split(".", 1)
        if int(old) in new_index:
            state[f"{prefix}{new_index[int(old)]}.{rest}"] = value
    dtype = next(model.parameters()).dtype
    student = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=model.config._attn_implementation)
    try:
        student.load_state_dict(state, strict=True)  # copies into the student's own tensors
    except RuntimeError as e:
        raise UserError(f"shrink: the pruned {type(model).__name__} does not match its source's weights: "
                        f"{str(e).splitlines()[0]}") from None
    student.generation_config = copy.deepcopy(model.generation_config)
    return student.to(next(model.parameters()).device)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embeddings count once


# --- 2. healing --------------------------------------------------------------------------------


def forward_kl(base_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(base || student) = sum_v p_b (log p_b - log p_s) per row: (M, V), (M, V) -> (M,)."""
    import torch

    base_logp = torch.log_softmax(base_logits.float(), dim=-1)  # (M, V)
    student_logp = torch.log_softmax(student_logits.float(), dim=-1)  # (M, V)
    # F.kl_div(input, target) is KL(target || input): target = base
    return torch.nn.functional.kl_div(student_logp, base_logp, log_target=True, reduction="none").sum(-1)


def healing_prompts(num_prompts: int, seed: int, exclude: set[str]) -> list[dict]:
    """The first `num_prompts` problems of the healing mixture whose question is not in `exclude`."""
    from .config import DataConfig
    from .tasks.reasoning_gym_source import reasoning_gym_problems

    mixture = DataConfig(source="reasoning_gym", mixture=[{"task": t} for t in HEAL_TASKS])
    problems = reasoning_gym_problems(mixture, seed + HEAL_SEED_OFFSET, 10 * num_prompts + len(exclude))
    chosen = []
    for i in range(len(problems)):  # lazy: problems are generated on access
        if len(chosen) == num_prompts:
            break
        if problems[i]["question"] not in exclude:
            chosen.append(problems[i])
    return chosen


def sample_healing_text(base, tokenizer, problems: list[dict], max_new_tokens: int, batch_size: int, seed: int) -> tuple[list[list[int]], list[dict]]:
    """Each prompt (chat template) followed by one continuation the base samples at T = 1 with the
    rollout engine. Returns the token ids of each sequence and rows for `heal_text.jsonl`."""
    import torch

    from .config import PromptConfig, RolloutConfig
    from .models import eos_token_ids
    from .prompts import encode_prompt, render_prompt
    from .rollout import RolloutEngine

    prompt_cfg = PromptConfig() if getattr(tokenizer, "chat_template", None) else PromptConfig(template="{question}")
    engine = RolloutEngine(base, tokenizer, eos_token_ids(base, tokenizer), tokenizer.pad_token_id)
    params = RolloutConfig(num_generations=1, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0)
    generator = torch.Generator(device=engine.device).manual_seed(seed)
    sequences, rows = [], []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        texts = [render_prompt(tokenizer, p["question"], prompt_cfg) for p in chunk]
        batch = engine.generate([encode_prompt(tokenizer, t, prompt_cfg.template) for t in texts], params, generator)
        for i, (problem, text) in enumerate(zip(chunk, texts)):
            prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()]  # (Lp_i,)
            completion = batch.completion_ids[i][batch.completion_mask[i].bool()]  # (Lc_i,)
            sequences.append(torch.cat([prompt, completion]).tolist())
            rows.append({"task": problem["task"], "prompt": text, "continuation": batch.texts[i]})
    return sequences, rows


def batch_kl(base, student, sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, int]:
    """Mean forward KL over every real token position of `sequences` (with gradients into the
    student), and the number of positions."""
    import torch

    from .engine import left_pad, positions_from_mask

    device = next(student.parameters()).device
    ids, mask = left_pad(sequences, pad_id)  # (B, L)
    ids, mask = ids.to(device), mask.to(device)
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask))
    real = mask.bool()  # (B, L)
    with torch.no_grad():
        base_logits = base(**inputs).logits[real]  # (M, V)
    student_logits = student(**inputs).logits[real]  # (M, V)
    return forward_kl(base_logits, student_logits).mean(), int(real.sum())


def mean_kl(base, student, sequences: list[list[int]], pad_id: int, batch_size: int) -> float:
    """Token-weighted mean forward KL over `sequences`."""
    import torch

    total, tokens = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        with torch.no_grad():
            kl, n = batch_kl(base, student, sequences[start : start + batch_size], pad_id)
        total, tokens = total + kl.item() * n, tokens + n
    return total / max(tokens, 1)


def heal(base, student, sequences: list[list[int]], pad_id: int, steps: int, lr: float, batch_size: int, seed: int,
         log_every: int = 10) -> list[float]:
    """`steps` AdamW steps on the forward KL of `batch_size` sequences each (a seeded shuffle,
    reshuffled each epoch); returns the KL of every step."""
    import torch

    base.eval()
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    curve = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = []
        while len(batch) < min(batch_size, len(sequences)):
            if not order:
                order = torch.randperm(len(sequences), generator=generator).tolist()
            batch.append(sequences[order.pop()])
        kl, _ = batch_kl(base, student, batch, pad_id)
        optimizer.zero_grad(set_to_none=True)
        kl.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        curve.append(round(kl.item(), 5))
        if log_every and (step % log_every == 0 or step == steps):
            recent = curve[-log_every:]
            print(f"heal step {step}/{steps}: kl {sum(recent) / len(recent):.4f} (step 1: {curve[0]:.4f}), "
                  f"{(time.perf_counter() - start) / step:.2f} s/step", flush=True)
    student.eval()
    return curve


# --- the command ---------------------------------------------------------------------------------


def run(args) -> dict:
    from .distill import _Stage
    from .models import load_model
    from .precision import SamplingCopy, run_precision
    from .runtime import configure_cpu, default_device, quiet_library_progress_bars, seed_everything

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; choose a new directory")
    if sum(x is not None for x in (args.keep, args.drop_last, args.drop_block)) != 1:
        raise UserError(ONE_CHOICE)
    for flag in ("steps", "batch_size", "prompts", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.lr <= 0:
        raise UserError("--lr must be > 0")
    exclude = set()
    if args.exclude_recipe:
        from .config import load_config
        from .tasks import load_task

        exclude = {p["question"] for p in load_task(load_config(args.exclude_recipe, []).data, allow_empty_train=True).held_out}
    quiet_library_progress_bars()
    configure_cpu(args.threads)
    seed_everything(args.seed)
    stats = ShrinkStats()
    device = default_device()
    out.mkdir(parents=True, exist_ok=True)

    with _Stage(stats, "prune" if args.drop_block is None else "load"):
        base = load_model(args.model, device, "float32")
        precision = run_precision(args.compute_dtype, device, base.model)
        print(precision.describe(), flush=True)
        base.model.eval()
        num_layers = len(decoder_layers(base.model))
        if args.drop_block is None:
            keep = choose_layers(num_layers, args.keep, args.drop_last)
            student = prune_layers(base.model, keep)
        elif not 1 <= args.drop_block < num_layers:
            raise UserError(f"--drop-block {args.drop_block}: must be between 1 and {num_layers - 1} (the model has {num_layers} layers)")
    tok = base.tokenizer
    if not args.no_heal or args.drop_block is not None:
        with _Stage(stats, "sample"):
            problems = healing_prompts(args.prompts, args.seed, exclude)
            sampler = SamplingCopy(base.model, precision.compute).model if precision.half else base.model  # decodes in bf16 throughout
            sequences, rows = sample_healing_text(sampler, tok, problems, args.max_new_tokens, SAMPLE_BATCH, args.seed)
            del sampler
        tokens = sum(map(len, sequences))
        print(f"sampled {len(sequences)} continuations from the base ({tokens} tokens of text with their prompts)", flush=True)
        (out / "heal_text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        n_val = min(MAX_VAL_SEQUENCES, len(sequences) // 10)  # held aside: not healed on, not measured on
    distances = None
    if args.drop_block is not None:
        with _Stage(stats, "measure"), precision.autocast(device):
            distances = block_angular_distances(base.model, sequences[n_val:], tok.pad_token_id, args.drop_block, SAMPLE_BATCH)
            keep = most_redundant_block(num_layers, distances["by_start"])
        dropped = [i for i in range(num_layers) if i not in keep]
        print(f"angular distance across {args.drop_block} layer(s), by first layer: "
              + " ".join(f"{i}:{d:.3f}" for i, d in enumerate(distances["by_start"]))
              + f"; the smallest, {distances['by_start'][dropped[0]]:.4f}, drops layer(s) {_ranges(dropped)}", flush=True)
        distances = {**distances, **{k: [round(v, 5) for v in distances[k]] for k in ("by_start", "per_layer")}}
        with _Stage(stats, "prune"):
            student = prune_layers(base.model, keep)
    before, after = count_parameters(base.model), count_parameters(student)
    print(f"kept {len(keep)} of {num_layers} layers ({','.join(map(str, keep))}): {before / 1e6:.1f}M -> {after / 1e6:.1f}M parameters",
          flush=True)
    summary = {
        "source": args.model, "source_dir": base.source,
        "layers": {"source": num_layers, "kept": keep, "dropped": [i for i in range(num_layers) if i not in keep],
                   "angular_distance": distances},
        "parameters": {"before": before, "after": after, "ratio": round(after / before, 4)},
        "heal": None,
    }
    if not args.no_heal:
        val, train = sequences[:n_val], sequences[n_val:]
        with _Stage(stats, "heal"), precision.autocast(device):
            val_before = mean_kl(base.model, student, val, tok.pad_token_id, args.batch_size) if val else None
            curve = heal(base.model, student, train, tok.pad_token_id, args.steps, args.lr, args.batch_size, args.seed, args.log_every)
            val_after = mean_kl(base.model, student, val, tok.pad_token_id, args.batch_size) if val else None
        if val:
            print(f"held-aside KL to the base ({n_val} sequences): {val_before:.4f} -> {val_after:.4f}", flush=True)
        summary["heal"] = {
            "settings": {**{k: getattr(args, k) for k in ("steps", "lr", "batch_size", "prompts", "max_new_tokens", "seed")},
                         "compute_dtype": precision.name},
            "tasks": list(HEAL_TASKS), "exclude_recipe": args.exclude_recipe, "excluded_questions": len(exclude),
            "sequences": {"train": len(train), "held_aside": n_val}, "tokens": tokens,
            "kl_first": curve[0], "kl_last": curve[-1],
            "held_aside_kl_before": round(val_before, 6) if val else None, "held_aside_kl_after": round(val_after, 6) if val else None,
            "kl_curve": curve,
        }
    with _Stage(stats, "save"):
        student.save_pretrained(out)
        base.tokenizer.save_pretrained(out)
    summary["seconds"], summary["cpu_seconds"] = stats.seconds, stats.cpu_seconds
    (out / "shrink.json").write_text(json.dumps(summary, indent=1))
    print(f"student: {out}\nsummary: {out / 'shrink.json'}")
    return summary


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("shrink", help="drop decoder layers to make a smaller student, then heal it by logit distillation from the source",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="source: built-in name, checkpoint or HF directory")
    p.add_argument("--out", required=True, help="new output directory (becomes an HF checkpoint)")
    p.add_argument("--keep", help="layers to keep: every_other, or indices and ranges, e.g. 0,2,4 or 0-19,29")
    p.add_argument("--drop-last", type=int, help="drop the N deepest layers")
    p.add_argument("--drop-block", type=int, metavar="N",
                   help="drop the N consecutive layers that change the residual stream least (angular distance on the healing text)")
    p.add_argument("--no-heal", action="store_true", help="only prune; no distillation")
    p.add_argument("--steps", type=int, default=100, help="healing steps (default 100)")
    p.add_argument("--lr", type=float, default=1e-4, help="healing learning rate, AdamW, constant (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per healing step (default 4)")
    p.add_argument("--prompts", type=int, default=256, help="reasoning-gym prompts the base continues (default 256)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="length of the base's continuations (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10, help="a progress line every N healing steps (default 10)")
    p.add_argument("--exclude-recipe", help="also leave out this recipe's held-out questions")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="matmul dtype for sampling, measuring and healing; the weights stay fp32 (default auto: bf16 where "
                        "this machine computes it clearly faster, measured once)")
    p.set_defaults(func=lambda args: (run(args), 0)[1])
