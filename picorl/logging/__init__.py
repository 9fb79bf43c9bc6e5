"""Metrics, console output and training curves of a run.

``plot_training_curves`` is imported lazily: matplotlib takes about a second to import and most
users of this package (eval, the Wilson interval) never plot.
"""

from picorl.logging.console import (
    UpdateProgress,
    format_eval_lines,
    format_sft_line,
    format_update_line,
)
from picorl.logging.metrics import MetricsLogger, read_jsonl
from picorl.logging.stats import wilson_interval

__all__ = [
    "MetricsLogger",
    "UpdateProgress",
    "format_eval_lines",
    "format_sft_line",
    "format_update_line",
    "plot_training_curves",
    "read_jsonl",
    "wilson_interval",
]


def __getattr__(name: str):
    if name == "plot_training_curves":
        from picorl.logging.plots import plot_training_curves

        return plot_training_curves
    raise AttributeError(f"module 'picorl.logging' has no attribute {name!r}")
