"""Reasoning traces: read them, find self-correction in them, and watch a run for collapse.

    from rl_reasoning import traces
    for record in traces.load("runs/quickstart-..."):          # streams traces.jsonl
        a = traces.analyze(record["completion"], record["answer"], record["correct"], record["length"])
        if a.aha: print(a.revision)
"""

from .alarms import Alarm, AlarmConfig, AlarmMonitor, alarms_from_metrics
from .analysis import Analyzer, TraceAnalysis, step_statistics
from .detectors import (
    DEFAULT_MARKERS,
    answers_match,
    find_reflections,
    find_revision,
    find_verifications,
    is_degenerate,
    reflections_per_1k_tokens,
    stated_answers,
)
from .store import iter_steps, load, load_frame, prompt_key, trace_path

analyze = Analyzer()

__all__ = [
    "Alarm",
    "AlarmConfig",
    "AlarmMonitor",
    "Analyzer",
    "DEFAULT_MARKERS",
    "TraceAnalysis",
    "alarms_from_metrics",
    "analyze",
    "answers_match",
    "find_reflections",
    "find_revision",
    "find_verifications",
    "is_degenerate",
    "iter_steps",
    "load",
    "load_frame",
    "prompt_key",
    "reflections_per_1k_tokens",
    "stated_answers",
    "step_statistics",
    "trace_path",
]
