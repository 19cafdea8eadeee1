"""Problems for training and held-out evaluation, and the seeded order they are served in.

A problem is a dict with at least `question` and `answer`; every other key is a dataset
column passed through to the reward functions (TRL's convention). Sources:

- `reasoning_gym`: a procedural task by name; items are generated lazily by index. The
  held-out set uses a different seed, and any training item whose question also appears in
  the held-out set is skipped, so the two are disjoint by construction.
- `jsonl`: one JSON object per line with a question and an answer column; a seeded
  permutation puts the first `eval_size` rows in the held-out set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .config import DataConfig
from .errors import UserError

EVAL_SEED_OFFSET = 1_000_003


@dataclass
class TaskData:
    train: Sequence[dict]
    held_out: list[dict]

    def __post_init__(self):
        self._held_out_questions = {p["question"] for p in self.held_out}

    def is_held_out(self, problem: dict) -> bool:
        return problem["question"] in self._held_out_questions


class ReasoningGymProblems(Sequence):
    """Lazy view of a reasoning-gym dataset as problem dicts."""

    def __init__(self, task: str, task_config: dict, seed: int, size: int):
        import reasoning_gym

        try:
            self.dataset = reasoning_gym.create_dataset(task, seed=seed, size=size, **task_config)
        except (ValueError, TypeError, AssertionError, KeyError) as e:
            raise UserError(f"data: reasoning-gym task {task!r} with config {task_config}: {e}") from None
        self.task = task

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < len(self):
            raise IndexError(idx)  # reasoning-gym itself generates for any index
        entry = self.dataset[idx]
        return {
            "question": entry["question"],
            "answer": str(entry["answer"]),
            "metadata": entry.get("metadata", {}),
            "task": self.task,
        }


def read_jsonl(path: Path, question_column: str, answer_column: str) -> list[dict]:
    if not path.is_file():
        raise UserError(f"data.path: file not found: {path}")
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            for col in (question_column, answer_column):
                if col not in row:
                    raise UserError(f"{path}:{lineno}: missing column {col!r} (has {', '.join(row)})")
            question = str(row.pop(question_column))
            if not question.strip():
                raise UserError(f"{path}:{lineno}: column {question_column!r} is empty")
            answer = row.pop(answer_column)
            rows.append({**row, "question": question, "answer": str(answer)})
    return rows


def load_task(cfg: DataConfig) -> TaskData:
    if cfg.source == "reasoning_gym":
        train = ReasoningGymProblems(cfg.task, cfg.task_config, cfg.seed, cfg.train_size)
        held_out = list(ReasoningGymProblems(cfg.task, cfg.task_config, cfg.seed + EVAL_SEED_OFFSET, max(cfg.eval_size, 1)))
        data = TaskData(train=train, held_out=held_out[: cfg.eval_size])
    else:
        rows = read_jsonl(Path(cfg.path), cfg.question_column, cfg.answer_column)
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        held_out = [rows[i] for i in order[: cfg.eval_size]]
        train = [rows[i] for i in order[cfg.eval_size :]]
        data = TaskData(train=train, held_out=held_out)
        data.train = [p for p in train if not data.is_held_out(p)]  # duplicates across the split
    if len(data.train) == 0:
        raise UserError(f"data: the training set is empty ({cfg.source} {cfg.path or cfg.task})")
    return data


class PromptSampler:
    """Serves training problems in a seeded order, epoch after epoch; its state is resumable."""

    def __init__(self, data: TaskData, seed: int):
        self.data = data
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_033 + epoch)
        return torch.randperm(len(self.data.train), generator=gen).tolist()

    def next_batch(self, n: int) -> list[dict]:
        batch: list[dict] = []
        skipped_in_a_row = 0
        while len(batch) < n:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            idx = self._order[self.position]
            self.position += 1
            problem = self.data.train[idx]
            if self.data.is_held_out(problem):
                skipped_in_a_row += 1
                if skipped_in_a_row > len(self._order):
                    raise UserError("data: every training problem also appears in the held-out set")
                continue
            skipped_in_a_row = 0
            batch.append({**problem, "id": f"train-{idx}"})
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._order = self._permutation(self.epoch)
