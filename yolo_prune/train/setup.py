"""What happens when training starts: a new schedule, the one a resumed checkpoint carries, or a sparse model's zeros.

Called at ``on_pretrain_routine_end``, after Ultralytics has built the model, EMA, optimizer and loaders. Each returns
the run's ``prune_state`` (None: nothing to do). Checks that need the live trainer are made here; everything that can
be checked before the run folder exists is the config's and :func:`~yolo_prune.train.trainers.check_new_run`'s.
"""

from __future__ import annotations

import copy

from ultralytics.utils import LOGGER

from ..cfg import PruneConfig
from ..checkpoint import is_distilling, student_of
from ..engine.allocate import check_table
from ..engine.graph import check_supported
from ..engine.pruner import model_info
from ..support import has
from .latency_run import LatencyRun
from .schedule import check_patience, new_schedule
from .state import config_of, is_current, make_state, read_state, remaining, zeroes_weights
from .step import FLOPS_IMGSZ


def resumed(cfg: PruneConfig, raw: dict) -> dict:
    """The schedule of a resumed checkpoint, finished or not (keys given now do not change it)."""
    state = read_state(raw)
    was = config_of(state)
    if cfg.target is not None and cfg.target != was.target:
        LOGGER.warning(f"yolo-prune: resume ignores the target given now ({cfg.target}), continuing {was.target}")
    LOGGER.info(f"yolo-prune: resuming with {state['done']}/{len(state['schedule'])} steps done")
    return state


def new(cfg: PruneConfig, trainer, model, latency: LatencyRun) -> dict:
    """A new schedule: the model measured, the latency target checked, the plan of steps logged."""
    check_supported(model)
    if cfg.prune_sensitivity:
        check_table(cfg.prune_sensitivity, model)
    info = model_info(model, FLOPS_IMGSZ)
    schedule = new_schedule(cfg, trainer.epochs, trainer.args.patience, trainer.args.val)
    state = make_state(cfg, schedule.epochs, info)
    state["distill"] = "self" if cfg.prune_distill else "model" if is_distilling(trainer.model) else None
    if cfg.prune_latency is not None:
        lat = state["latency"] = latency.start(trainer, model, cfg)
        what = f"{lat['fraction']:.0%} of {lat['base_ms']:.2f} ms on {lat['runtime']} (imgsz {lat['imgsz']})"
    elif cfg.structured:
        what = f"{cfg.prune:.0%} of {info['gflops']:.2f} GFLOPs"
    else:
        what = f"{cfg.prune:.0%} of the weights ({cfg.prune_mode})"
    LOGGER.info(
        f"yolo-prune: removing {what} in {schedule.steps} steps at epochs {[e + 1 for e in schedule.epochs]} "
        f"({cfg.prune_method}, round {cfg.prune_round}"
        + (f", sparsity lambda {cfg.prune_sparsity:g}" if cfg.prune_sparsity else "")
        + (f", group regularization {cfg.prune_reg:g}" if cfg.prune_reg else "")
        + ")"
    )
    return state


def sparse(raw: dict) -> dict:
    """Fine-tuning a sparse model with no schedule of its own: its zeroed weights stay zero."""
    state = read_state(copy.deepcopy(raw))
    state["schedule"] = state["schedule"][: state["done"]]  # an unfinished old schedule is not continued
    LOGGER.info(f"yolo-prune: fine-tuning a {state['cfg']['prune_mode']} sparse model; its zeroed weights stay zero")
    return state


def start(cfg: PruneConfig, trainer, latency: LatencyRun) -> tuple[dict | None, bool]:
    """The run's state (None: nothing to prune or keep), and whether it only keeps a sparse model's zeros."""
    model = student_of(trainer.model)
    raw = getattr(model, "prune_state", None)
    if trainer.resume and raw:
        return resumed(cfg, raw), False
    if raw and not is_current(raw):
        LOGGER.warning(
            f"yolo-prune: the model's prune_state is version {raw.get('version') if isinstance(raw, dict) else '?'}, "
            f"of an earlier yolo-prune: it trains as it is, without it (a sparse model's zeros are not kept)"
        )
        raw = None
    if cfg.target is not None:
        return new(cfg, trainer, model, latency), False
    if raw and zeroes_weights(raw):
        return sparse(raw), True
    return None, False


def check_remaining(trainer, state: dict) -> None:
    """Refuse steps still to run that early stopping can cut short (resumed: counted from the stopper's last
    improvement); warn where ``time=`` may re-plan the epochs."""
    todo = remaining(state)
    if not trainer.resume:
        start_epoch = 0
    elif has("stopper resume"):  # the stopper counts from its last improvement (best_epoch is 1-based)
        start_epoch = min(trainer.start_epoch, max(trainer.stopper.best_epoch - 1, 0))
    else:  # before 8.4.172 a resumed run starts a fresh stopper: its count restarts at the resume epoch
        start_epoch = trainer.start_epoch
    check_patience(trainer.args.patience, todo, start_epoch, val=trainer.args.val)
    if trainer.args.time:
        LOGGER.warning(
            f"yolo-prune: time={trainer.args.time} re-estimates the number of epochs after the first one; prune "
            f"steps are at epochs {[e + 1 for e in todo]} of {trainer.epochs}, and steps past the new end "
            f"will not run (the run's end says how far it got)"
        )


def attach(trainer, state: dict | None) -> None:
    """Point the model and its EMA at the one state the run updates.

    NaN recovery replaces the EMA with a deepcopy of the model (a copy of the state), and checkpoints pickle the EMA:
    re-attaching at each epoch start and step keeps every copy the current one.
    """
    student_of(trainer.model).prune_state = state
    if trainer.ema is not None:
        student_of(trainer.ema.ema).prune_state = state
