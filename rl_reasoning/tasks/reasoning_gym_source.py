"""reasoning-gym tasks as lazy problem sequences: one task, or a weighted mixture of several.

A mixture picks, for item i, a task with probability proportional to its weight (a seeded
per-item draw, so item i is the same on every run) and takes that task's item i.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..config import DataConfig
from ..errors import UserError


class ReasoningGymProblems(Sequence):
    """Lazy view of one reasoning-gym dataset as problem dicts."""

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


class MixtureProblems(Sequence):
    def __init__(self, parts: list[tuple[ReasoningGymProblems, float]], seed: int, size: int):
        self.parts = parts
        self.seed = seed
        self.size = size
        total = sum(w for _, w in parts)
        self.cumulative = []
        acc = 0.0
        for _, w in parts:
            acc += w / total
            self.cumulative.append(acc)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < self.size:
            raise IndexError(idx)
        u = random.Random(self.seed * 7_919 + idx).random()
        k = next((j for j, c in enumerate(self.cumulative) if u < c), len(self.parts) - 1)
        return self.parts[k][0][idx]


def reasoning_gym_problems(cfg: DataConfig, seed: int, size: int) -> Sequence[dict]:
    if not cfg.mixture:
        return ReasoningGymProblems(cfg.task, cfg.task_config, seed, size)
    parts = []
    for i, entry in enumerate(cfg.mixture):
        unknown = set(entry) - {"task", "weight", "config"}
        if "task" not in entry or unknown:
            raise UserError(f"data.mixture[{i}]: needs 'task' (and optional 'weight', 'config'); unknown keys {sorted(unknown)}")
        weight = float(entry.get("weight", 1.0))
        if weight <= 0:
            raise UserError(f"data.mixture[{i}].weight: must be > 0")
        parts.append((ReasoningGymProblems(entry["task"], entry.get("config") or {}, seed, size), weight))
    return MixtureProblems(parts, seed, size)
