"""When to prune and how much: N steps between epochs ``prune_start`` and ``prune_end``, linear in GFLOPs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..cfg import PruneConfig, PruneError

# default share of epochs left for fine-tuning after the last step: 0.6 measured best in the lever runs (a last step at
# 70% of the run left too few epochs to recover; benchmarks/results/accuracy_levers.md)
FINETUNE_TAIL = 0.6
DEFAULT_STEPS = 4  # small steps prune better than one big one; capped by the epochs available


@dataclass
class PruneSchedule:
    """Epochs at whose start step k (1-based) runs, and the GFLOPs fraction of the original each step leaves."""

    prune: float
    epochs: list[int]

    @property
    def steps(self) -> int:
        return len(self.epochs)


def make_schedule(
    prune: float, total_epochs: int, steps: int | None = None, start: int | None = None, end: int | None = None
) -> PruneSchedule:
    """Spread ``steps`` prune steps over epochs ``start``..``end`` of a ``total_epochs`` run.

    Defaults leave at least 60% of the epochs after the last step for fine-tuning (less if more steps are asked for
    than fit), and start after about 10% of the
    run (at epoch 1 for short runs) so a model trained from scratch has weights worth ranking. ``steps=1`` with
    ``start=0`` is one-shot pruning of a trained model followed by fine-tuning.
    """
    last_allowed = total_epochs - 1
    auto_end = end is None
    if end is None:
        end = (
            start
            if (start is not None and steps == 1)
            else max(0, total_epochs - math.ceil(FINETUNE_TAIL * total_epochs))
        )
    if start is None:
        start = min(max(1, round(0.1 * total_epochs)), end)
    if auto_end and isinstance(steps, int) and not isinstance(steps, bool) and steps > end - start + 1:
        end = min(last_allowed, start + steps - 1)  # room for the steps asked for, at the cost of fine-tuning epochs
    if steps is None:  # auto: up to DEFAULT_STEPS, one per epoch in the window
        steps = max(1, min(DEFAULT_STEPS, end - start + 1))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PruneError(f"prune_steps={steps!r} is invalid; accepted: an integer >= 1")
    for key, v in (("prune_start", start), ("prune_end", end)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= last_allowed:
            raise PruneError(
                f"{key}={v!r} is invalid; accepted: an epoch from 0 to {last_allowed} (epochs={total_epochs})"
            )
    if end < start:
        end_is = f"prune_end={end}" if not auto_end else f"the default prune_end (epoch {end}: the last 60% of "
        end_is += "" if not auto_end else f"epochs={total_epochs} fine-tune)"
        raise PruneError(f"{end_is} is before prune_start={start}; accepted: prune_start <= prune_end (set prune_end, "
                         f"or more epochs)")  # fmt: skip
    if steps > end - start + 1:
        raise PruneError(
            f"prune_steps={steps} does not fit epochs {start}..{end}; accepted: at most {end - start + 1} steps "
            f"(one per epoch), or widen prune_start/prune_end"
        )
    if steps == 1:
        return PruneSchedule(prune, [start])
    epochs = [start + round(k * (end - start) / (steps - 1)) for k in range(steps)]
    for k in range(1, steps):  # rounding can collide on tight ranges: keep the steps in distinct epochs
        epochs[k] = max(epochs[k], epochs[k - 1] + 1)
    return PruneSchedule(prune, epochs)


TARGET_TOLERANCE = 0.01  # a reached GFLOPs reduction more than 1 point off the target is reported


def warn_if_missed(target: float, base_gflops: float, gflops: float, where: str) -> bool:
    """Warn (one line, with the reached figure) when the GFLOPs removed miss ``target`` by more than 1 point."""
    reached = 1.0 - gflops / base_gflops
    if abs(reached - target) <= TARGET_TOLERANCE:
        return False
    from ultralytics.utils import LOGGER

    LOGGER.warning(
        f"yolo-prune: {where} missed its GFLOPs target: {reached:.1%} removed ({base_gflops:.2f} -> {gflops:.2f} "
        f"GFLOPs), target {target:.1%}; the nearest reachable plan at this prune_round was used"
    )
    return True


def new_schedule(cfg: PruneConfig, epochs: int, patience: int | None, val: bool = True) -> PruneSchedule:
    """The schedule of a new run, checked against the run's epochs and early stopping.

    Args:
        cfg: The validated config (its target, ``prune_steps``, ``prune_start``, ``prune_end``).
        epochs: The run's ``epochs``.
        patience: The run's ``patience`` (early stopping must not cut the schedule short).
        val: The run's ``val`` (without validation there is no early stopping).

    Raises:
        PruneError: Steps that do not fit the epochs, or a patience that can stop the run before the last step.
    """
    schedule = make_schedule(cfg.target, epochs, cfg.prune_steps, cfg.prune_start, cfg.prune_end)
    check_patience(patience, schedule.epochs, val=val)
    return schedule


def check_patience(patience: int | None, epochs: list[int], start: int = 0, val: bool = True) -> None:
    """PruneError if early stopping can end the run before the last step.

    Each step restarts Ultralytics' best-fitness tracking, so with no improvement the stopper fires ``patience``
    epochs after a step (or after epoch 1): the steps are safe when no two consecutive ones (counting from ``start``,
    the epoch of the last improvement) are more than ``patience`` epochs apart. ``patience=0`` disables Ultralytics'
    early stopping, and without validation (``val=False``) there is no fitness for it to stop on.
    """
    if not patience or not val:
        return
    points = [start, *epochs]
    gap = max((b - a for a, b in zip(points, points[1:])), default=0)
    if patience < gap:
        raise PruneError(
            f"patience={patience} can stop training before the last prune step ({gap} epochs between steps at "
            f"epochs {[e + 1 for e in epochs]}); accepted: patience >= {gap}, patience=0 (no early stopping), or "
            f"steps closer together (prune_start / prune_end / prune_steps)"
        )
