"""Channel importance criteria, kept apart from the engine the way torch-pruning separates them from its pruners.

A criterion is any callable ``(group) -> Tensor`` returning one score per channel of the group's root layer (higher
means keep). Register new ones with :func:`register`; ``prune_method=<name>`` picks them by name.
"""

from __future__ import annotations

from typing import Callable

import torch_pruning as tp

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
}


def register(name: str, factory: Callable[[], tp.importance.Importance]) -> None:
    """Make ``prune_method=name`` build its criterion with ``factory()``."""
    IMPORTANCES[name] = factory


def get_importance(name: str) -> tp.importance.Importance:
    """Return a fresh criterion for ``prune_method=name``."""
    if name not in IMPORTANCES:
        raise KeyError(name)
    return IMPORTANCES[name]()
