"""Reward-hacking and collapse alarms over the stream of per-step metrics.

Each alarm fires once when its condition starts to hold (and again only after it has cleared),
so a long collapse is one warning, not one per step. The trainer feeds it every step's metrics
and prints/logs what fires; `alarms_from_metrics` replays a finished run's metrics.jsonl.

- reward_hacking: over the last `window` steps the format rate rose by >= `format_rise` while
  accuracy fell by >= `accuracy_drop` (least-squares trend x window length).
- repetition_collapse: >= `degenerate_frac` of the step's completions are degenerate
  (character runs, looping n-grams; see detectors.is_degenerate).
- entropy_collapse: mean token entropy of the last 3 steps below `entropy_ratio` x that of the
  first 3 steps, or below `entropy_floor` nats.
- all_equal_rewards: every group had zero reward variance for `patience` steps in a row (no gradient).
- examples_special_casing (code rewards with hidden tests): over the window the share of programs
  that pass every example shown in the prompt but fail a hidden test rose by >= `format_rise`
  while accuracy did not rise by as much: the policy may be fitting the shown examples.

With a code reward the reward_hacking alarm's "format" is the runnable-program rate.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


def format_summary(m: dict) -> tuple[str, float]:
    """What "format" means for this run's progress line: with a code reward, the share of
    completions whose program parses and defines the asked function (`runnable`); else the
    think/answer format rate (`fmt`)."""
    runnable = next((v for k, v in m.items() if k.startswith("rewards/") and k.endswith("/runnable_frac")), None)
    return ("runnable", runnable) if runnable is not None else ("fmt", m["format_rate"])


@dataclass(frozen=True)
class Alarm:
    step: int
    name: str
    message: str


@dataclass
class AlarmConfig:
    window: int = 10
    format_rise: float = 0.2
    accuracy_drop: float = 0.1
    degenerate_frac: float = 0.5
    entropy_ratio: float = 0.1
    entropy_floor: float = 0.02
    patience: int = 5


class AlarmMonitor:
    def __init__(self, cfg: AlarmConfig | None = None):
        self.cfg = cfg or AlarmConfig()
        self.history: deque[dict] = deque(maxlen=max(self.cfg.window, 3))
        self.first_entropies: list[float] = []
        self.zero_variance_run = 0
        self.active: set[str] = set()

    def update(self, metrics: dict) -> list[Alarm]:
        """Feed one step's metrics (needs 'step'; uses accuracy, format_rate, entropy,
        groups/zero_std_frac, traces/degenerate_frac when present). Returns newly fired alarms."""
        metrics = {**metrics, "alarm/format": format_summary(metrics)[1] if "format_rate" in metrics else None,
                   "alarm/examples_only": next((v for k, v in metrics.items() if k.endswith("/examples_only_frac")), None)}
        self.history.append(metrics)
        entropy = metrics.get("entropy")
        if entropy is not None and len(self.first_entropies) < 3:
            self.first_entropies.append(entropy)
        zero = metrics.get("groups/zero_std_frac")
        self.zero_variance_run = self.zero_variance_run + 1 if zero is not None and zero >= 1.0 else 0
        conditions = {
            "reward_hacking": self._reward_hacking(),
            "repetition_collapse": self._repetition(metrics),
            "entropy_collapse": self._entropy_collapse(),
            "all_equal_rewards": self._all_equal(),
            "examples_special_casing": self._special_casing(),
        }
        fired = []
        for name, message in conditions.items():
            if message and name not in self.active:
                fired.append(Alarm(int(metrics.get("step", 0)), name, message))
                self.active.add(name)
            elif not message:
                self.active.discard(name)
        return fired

    def _trend(self, key: str) -> float | None:
        """Least-squares slope x window length of `key` over the window (None if too few points)."""
        ys = [m[key] for m in self.history if m.get(key) is not None and not math.isnan(m[key])]
        ys = ys[-self.cfg.window :]
        if len(ys) < max(3, self.cfg.window // 2):
            return None
        n = len(ys)
        xbar, ybar = (n - 1) / 2, sum(ys) / n
        slope = sum((i - xbar) * (y - ybar) for i, y in enumerate(ys)) / sum((i - xbar) ** 2 for i in range(n))
        return slope * (n - 1)

    def _reward_hacking(self) -> str | None:
        fmt, acc = self._trend("alarm/format"), self._trend("accuracy")
        if fmt is None or acc is None:
            return None
        if fmt >= self.cfg.format_rise and acc <= -self.cfg.accuracy_drop:
            return (f"format rate rose {fmt:+.2f} while accuracy fell {acc:+.2f} over the last {self.cfg.window} steps: "
                    "the policy may be gaming the format reward")
        return None

    def _special_casing(self) -> str | None:
        only, acc = self._trend("alarm/examples_only"), self._trend("accuracy")
        if only is None or acc is None:
            return None
        if only >= self.cfg.format_rise and acc < only:
            return (f"programs passing the shown examples but failing hidden tests rose {only:+.2f} (accuracy {acc:+.2f}) over the "
                    f"last {self.cfg.window} steps: the policy may be special-casing the examples")
        return None

    def _repetition(self, metrics: dict) -> str | None:
        frac = metrics.get("traces/degenerate_frac")
        if frac is not None and frac >= self.cfg.degenerate_frac:
            return f"{frac:.0%} of completions are degenerate (repeated characters or looping phrases)"
        return None

    def _entropy_collapse(self) -> str | None:
        if len(self.first_entropies) < 3 or len(self.history) < 3:
            return None
        first = sum(self.first_entropies) / 3
        recent = [m.get("entropy") for m in list(self.history)[-3:]]
        if any(e is None for e in recent):
            return None
        now = sum(recent) / 3
        if now < self.cfg.entropy_floor or (first > 0 and now < self.cfg.entropy_ratio * first):
            return f"token entropy fell to {now:.3f} nats (first steps: {first:.3f}): sampling has become nearly deterministic"
        return None

    def _all_equal(self) -> str | None:
        if self.zero_variance_run >= self.cfg.patience:
            return f"every group had identical rewards for {self.zero_variance_run} steps in a row: no learning signal"
        return None


def alarms_from_metrics(records: Iterable[dict], cfg: AlarmConfig | None = None) -> list[Alarm]:
    """Replay a run's metrics.jsonl records through the monitor."""
    monitor = AlarmMonitor(cfg)
    out = []
    for m in records:
        out += monitor.update(m)
    return out
