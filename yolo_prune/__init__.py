"""yolo-prune: channel-level structured pruning for Ultralytics YOLO, through torch-pruning's dependency graph.

Public names are imported on first use (PEP 562), so ``yolo-prune help`` and ``yolo-prune version`` answer without
importing torch or Ultralytics.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "PruneCallbacks": "train.callbacks",
    "builtin_dataset": "datasets",
    "prune_model": "engine.targets",
    "add_pruning": "train.model",
    "PruneDetectionTrainer": "train.trainers",
}
__all__ = ["PruneCallbacks", "PruneDetectionTrainer", "__version__", "add_pruning", "builtin_dataset", "prune_model"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
