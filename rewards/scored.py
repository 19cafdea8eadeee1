"""A reward's return value that is still a plain list (TRL accepts it) but carries metrics too."""

from __future__ import annotations


class ScoredList(list):
    """`list[float | None]` plus `metrics`: {name: float}, logged as rewards/<reward>/<name>."""

    def __init__(self, values, metrics: dict | None = None):
        super().__init__(values)
        self.metrics = dict(metrics or {})
