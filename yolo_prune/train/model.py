"""Python entry point: ``add_pruning(YOLO(...), prune=0.5)`` then an ordinary ``model.train(...)``."""

from __future__ import annotations

from typing import Any

from ultralytics import YOLO

from ..cfg import PruneError
from ..support import require
from .callbacks import PruneCallbacks
from .trainers import TRAINERS


class PruningYOLO(YOLO):
    """``YOLO`` whose trainers keep pruned shapes, for every task (see :class:`PruneTrainerMixin`)."""

    @property
    def task_map(self) -> dict:
        tm = super().task_map
        return {**tm, **{task: {**tm[task], "trainer": cls} for task, cls in TRAINERS.items() if task in tm}}


def add_pruning(model: YOLO, **keys: Any) -> YOLO:
    """Make ``model.train()`` prune between epochs; returns the same object.

    Args:
        model: An ``ultralytics.YOLO`` model (any supported task).
        **keys: The CLI's training keys (:data:`yolo_prune.cfg.KEYS`): ``prune`` (fraction of GFLOPs to remove),
            ``prune_steps``, ``prune_start``, ``prune_end``, ``prune_method``, ``prune_round``, ... With no target the
            model still trains with its pruned shapes kept, and a resumed run continues the schedule stored in its
            checkpoint.

    Returns:
        The same object, now a :class:`PruningYOLO`.

    Raises:
        PruneError: A model that is not a ``YOLO`` of a supported task, or bad keys.

    Ultralytics' ``Model`` picks its trainer class from ``task_map`` with no hook to override it, so the wrapper's class
    becomes the :class:`PruningYOLO` subclass in place (the user's reference stays valid).
    """
    if type(model) not in (YOLO, PruningYOLO):
        raise PruneError(f"model: {type(model).__name__} is not supported; accepted: an ultralytics.YOLO model")
    if model.task not in TRAINERS:
        raise PruneError(f"model: task '{model.task}' is not supported; accepted: {', '.join(TRAINERS)}")
    cb = PruneCallbacks(**keys)
    if cb.cfg.prune_latency is not None and getattr(model.model.model[-1], "one2one_cv2", None) is not None:
        require("yolo26 export", "prune_latency on a YOLO26 model")  # before the run: the table is built at its start
    old = getattr(model, "prune_callbacks", None)
    if old is not None:  # calling add_pruning again replaces the settings instead of pruning twice
        for event, fn in old.callbacks.items():
            if fn in model.callbacks.get(event, []):
                model.callbacks[event].remove(fn)
    model.__class__ = PruningYOLO
    for event, fn in cb.callbacks.items():
        model.add_callback(event, fn)
    model.prune_callbacks = cb
    return model
