"""The checkpoint's ``prune_state``: what a schedule is, how far it got, and what the model was before it.

It lives on the model (and its EMA) as a plain dict, so it travels inside every Ultralytics checkpoint: ``resume=True``
continues the schedule with no plugin keys, one-shot checkpoints remember how they were made, and a sparse model keeps
its zeros when fine-tuned. The settings are the validated config under ``"cfg"``, with the keys' own names.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..cfg import PruneConfig, PruneError

STATE_VERSION = 2  # 2: the settings under "cfg" with the keys' names (1 had short names of its own)
REQUIRED = ("cfg", "schedule", "done", "history", "base")


def make_state(cfg: PruneConfig, schedule: list[int], base: dict) -> dict[str, Any]:
    """A new ``prune_state``.

    Args:
        cfg: The run's validated config.
        schedule: The epochs at whose start the steps run (empty for a one-shot prune).
        base: ``params`` and ``gflops`` of the model before the first step.

    Returns:
        The state: settings, step epochs, the model before the first step, and progress (``done``, ``history``).
    """
    return {
        "version": STATE_VERSION,
        "cfg": cfg.to_dict(),
        "schedule": list(schedule),
        "latency": None,  # prune_latency: {"fraction", runtime, ..., measured and predicted ms of the model at start}
        "distill": None,  # "self" (prune_distill), "model" (distill_model=) or None
        "base": base,
        "done": 0,
        "history": [],
    }


def read_state(state: Any) -> dict | None:
    """A checkpoint's ``prune_state``, checked; None when there is none.

    Raises:
        PruneError: A state of another version, or one that lacks a field a schedule needs.
    """
    if state is None:
        return None
    version = state.get("version") if isinstance(state, dict) else None
    if version != STATE_VERSION:
        who = "yolo-prune 0.1" if version in (None, 1) else "a later yolo-prune" if isinstance(version, int) else "?"
        raise PruneError(
            f"model: its prune_state is version {version} ({who}), this yolo-prune {__version__} reads version "
            f"{STATE_VERSION}; accepted: finish the run with the yolo-prune that wrote it, or start a new one from "
            f"its best.pt (no resume)"
        )
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise PruneError(
            f"model: its prune_state lacks '{missing[0]}' and cannot be continued; accepted: a checkpoint written by "
            f"yolo-prune, or train it without resume"
        )
    return state


def config_of(state: dict) -> PruneConfig:
    """The config a state was made with."""
    return PruneConfig.from_dict(state["cfg"])


def is_current(state) -> bool:
    """Whether ``state`` is a ``prune_state`` this version reads (not one of an earlier yolo-prune)."""
    return isinstance(state, dict) and state.get("version") == STATE_VERSION


def zeroes_weights(state: dict) -> bool:
    """Whether a schedule zeroes weights (unstructured / 2:4) instead of removing channels."""
    return state["cfg"]["prune_mode"] != "structured"


def remaining(state: dict) -> list[int]:
    """The epochs of the steps still to run."""
    return state["schedule"][state["done"] :]
