"""The files a training run writes in its directory, and the trace schema.

    config.yaml         the resolved configuration
    metrics.jsonl       one line per step
    traces.jsonl        one line per sampled completion (`trace_records`)
    eval.jsonl          one line per held-out evaluation
    eval_traces.jsonl   one line per held-out problem per evaluation
    summary.json        where everything is, and held-out accuracy before and after

Only the main process writes. JSONL files are append-only and fsync'ed (jsonl.py); on resume
from step s, the records of later steps are first moved to `<file>.dropped`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import torch

from rewards.extract import final_answer_with_source

from .config import Config, dump_config
from .errors import ConfigError, UserError
from .jsonl import JsonlWriter, truncate_after_step
from .metrics import StepRows
from .reward_runner import CORRECT

JSONL_FILES = ("metrics.jsonl", "traces.jsonl", "eval.jsonl", "eval_traces.jsonl")


def run_directory(cfg: Config, recipe_name: str) -> Path:
    """The run directory (`output_dir`, that of the checkpoint to resume, or runs/<recipe>-<time>),
    checked against `resume` and for writing before anything is loaded."""
    run_dir = Path(cfg.output_dir) if cfg.output_dir else Path("runs") / f"{recipe_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if cfg.resume is True and not cfg.output_dir:
        raise ConfigError("resume: true needs output_dir (the run to resume); or pass resume=<checkpoint dir>")
    if isinstance(cfg.resume, str) and not cfg.output_dir:
        run_dir = Path(cfg.resume).resolve().parent.parent
    _check_writable_dir(run_dir)
    if cfg.resume is False and (run_dir / "metrics.jsonl").exists():
        raise UserError(f"output_dir {run_dir} already holds a run; pass resume=true or choose another output_dir")
    return run_dir


def _check_writable_dir(path: Path) -> None:
    """`path` is, or can be created as, a directory we may write in."""
    if "\0" in str(path):
        raise UserError("output_dir: contains a NUL character")
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir {path} is a file, not a directory; choose another output_dir")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"output_dir {path}: {parent} is a file, so the directory cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"output_dir {path}: {parent} is not writable")


class RunFiles:
    """Writers for one run directory; every method is a no-op when `enabled` is false (ranks > 0)."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writers: dict[str, JsonlWriter] = {}

    def truncate_after(self, step: int) -> None:
        """Resume from `step`: records of later steps would be written again, so move them aside."""
        if self.enabled:
            for name in JSONL_FILES:
                truncate_after_step(self.run_dir / name, step)

    def open(self, cfg: Config) -> None:
        """Create the directory, write config.yaml and open the JSONL files for appending."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        self._writers = {name: JsonlWriter(self.run_dir / name) for name in JSONL_FILES}

    def _write(self, name: str, records: list[dict]) -> None:
        if self.enabled:
            self._writers[name].write(records)

    def step(self, metrics: dict, traces: list[dict]) -> None:
        self._write("traces.jsonl", traces)
        self._write("metrics.jsonl", [metrics])

    def evaluation(self, metrics: dict, records: list[dict]) -> None:
        self._write("eval.jsonl", [metrics])
        self._write("eval_traces.jsonl", records)

    def summary(self, summary: dict) -> None:
        if self.enabled:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def summary_record(run_dir: Path, steps: int, parameters: int, trainable: int, final_checkpoint: Path, eval_history: list[dict]) -> dict:
    """What summary.json holds: where the run's files are, and its first and last held-out evaluations."""
    return {
        "run_dir": str(run_dir),
        "steps": steps,
        "model_parameters": parameters,
        "trainable_parameters": trainable,
        "final_checkpoint": str(final_checkpoint),
        "metrics": str(run_dir / "metrics.jsonl"),
        "traces": str(run_dir / "traces.jsonl"),
        "eval_before": eval_history[0] if eval_history else None,
        "eval_after": eval_history[-1] if eval_history else None,
    }


def summary_text(summary: dict) -> str:
    """The lines a finished run prints: held-out accuracy before -> after, and where the files are."""
    first, last = summary["eval_before"], summary["eval_after"]
    lines = []
    if first and last:
        lines.append(f"\nheld-out accuracy: {first['eval/accuracy']:.1%} (step {first['step']}) -> {last['eval/accuracy']:.1%} "
                     f"(step {last['step']});  format {first['eval/format_rate']:.1%} -> {last['eval/format_rate']:.1%}")
    lines.append(f"metrics:     {summary['metrics']}\ntraces:      {summary['traces']}\ncheckpoint:  {summary['final_checkpoint']}\n"
                 f"evaluation:  {Path(summary['run_dir']) / 'eval.jsonl'} (completions in eval_traces.jsonl)")
    return "\n".join(lines)


def trace_records(step: int, problems: list[dict], prompt_texts: list[str], rows: StepRows, analyses: list,
                  accuracy_reward: str, answer_fallback: str) -> list[dict]:
    """One `traces.jsonl` record per completion of a step (schema in the README, "What a run writes")."""
    G = rows.group_size
    records = []
    for i, completion in enumerate(rows.completions):
        p = i // G
        total = rows.rewards[i]
        record = {
            "step": step,
            "prompt_id": problems[p]["id"],
            "group_index": i % G,
            "prompt": prompt_texts[p],
            "completion": completion,
            "answer": problems[p]["answer"],
            "rewards": {name: (None if torch.isnan(v[i]) else float(v[i])) for name, v in rows.components.items()},
            "reward": None if torch.isnan(total) else float(total),
            "correct": bool(rows.components[accuracy_reward][i] >= CORRECT),
            "advantage": float(rows.advantages[i]),
            "length": int(rows.lengths[i]),
            "truncated": bool(rows.truncated[i]),
            "extracted_answer": final_answer_with_source(completion, answer_fallback)[0],  # as the math reward reads it
        }
        if rows.episodes is not None:
            e = rows.episodes[i]
            record.update(tool_calls=e["tool_calls"], turns=e["turns"], verdicts=e["verdicts"], turn_texts=e["turn_texts"], feedback=e["feedback"])
        if analyses:
            a = analyses[i]
            record.update(reflections=[r.label for r in a.reflections], revision=a.revision.kind if a.revision else None,
                          verified=bool(a.verifications))
        records.append(record)
    return records
