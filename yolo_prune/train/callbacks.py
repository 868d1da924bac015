"""Ultralytics trainer callbacks that prune between epochs while training fine-tunes what remains.

Written like ``ultralytics/utils/callbacks/*.py``: event handlers and a ``callbacks`` dict, with the settings held by an
instance instead of module globals so several trainers can run with different settings. Each handler is a few lines
that call the module named after what it does: :mod:`~yolo_prune.train.setup` (start or resume a schedule),
:mod:`~yolo_prune.train.step` (one prune step), :mod:`~yolo_prune.train.hooks` (optimizer hooks),
:mod:`~yolo_prune.train.report` (columns and summary), :mod:`~yolo_prune.train.distill` (the teacher). The pruning
state lives on the model as ``prune_state`` (:mod:`~yolo_prune.train.state`), so it travels inside every checkpoint,
and plugin keys never touch ``trainer.args``.
"""

from __future__ import annotations

from typing import Any, Callable

from ultralytics.utils import LOGGER

from ..cfg import PruneConfig
from ..checkpoint import student_of
from ..engine.pruner import model_info
from ..engine.unstructured import MaskKeeper, masks_from_zeros, sparsity
from ..support import check_keys as check_features
from . import distill, report, setup
from .hooks import OptimizerHooks
from .latency_run import LatencyRun
from .step import FLOPS_IMGSZ, run_step
from .surgery import check_internals, rebuild_optimizer
from .trainers import PruneTrainerMixin, check_new_run


class PruneCallbacks:
    """Prune ``prune`` of the GFLOPs (or ``prune_latency`` of the latency) in ``prune_steps`` steps between
    ``prune_start`` and ``prune_end``.

    Args:
        **keys: yolo-prune training keys (see :data:`yolo_prune.cfg.KEYS`), validated here.

    With no target the callbacks only continue a schedule found in a resumed checkpoint, or keep a sparse model's zeros.
    """

    def __init__(self, **keys: Any):
        self.cfg = PruneConfig.from_keys(keys, "train")
        check_features({"prune_distill": self.cfg.prune_distill})  # any trainer: before its run folder exists
        self.state: dict | None = None
        self.info: dict | None = None  # params and GFLOPs of the model now (re-measured after each step)
        self.hooks = OptimizerHooks()
        self.latency = LatencyRun()
        self.kept_only = False  # a sparse checkpoint fine-tuned without a schedule of its own
        self._told_no_columns = False

    def on_pretrain_routine_start(self, trainer) -> None:
        """The run is checked here unless its :class:`PruneTrainerMixin` did it before the run folder existed."""
        if not getattr(trainer, "prune_checked", False):
            check_new_run(self.cfg, trainer.args)
            if self.cfg.prune_distill:
                distill.compile_off(trainer.args)

    def on_pretrain_routine_end(self, trainer) -> None:
        """Start a schedule, pick up the one carried by a resumed checkpoint, or keep a sparse checkpoint's zeros."""
        self.state, self.kept_only = setup.start(self.cfg, trainer, self.latency)
        st = self.state
        if st is None:
            return
        if st["done"] < len(st["schedule"]):
            check_internals(trainer)  # a changed Ultralytics internal stops here, not at the first step
            setup.check_remaining(trainer, st)
        if st.get("distill") == "self" and distill.begin(trainer, st):
            rebuild_optimizer(trainer, epoch=trainer.start_epoch)  # the optimizer must hold the projectors
        setup.attach(trainer, st)
        model = student_of(trainer.model)
        self.info = model_info(model, FLOPS_IMGSZ)
        mode = st["cfg"]["prune_mode"]
        if mode != "structured" and sparsity(model, mode) > 0:  # resumed or fine-tuned: zeros are masks
            self.hooks.keeper = MaskKeeper(model, masks_from_zeros(model, mode))

    def on_train_epoch_start(self, trainer) -> None:
        """Run every step scheduled at or before this epoch that has not run yet."""
        st = self.state
        if st is None:
            return
        setup.attach(trainer, st)
        while st["done"] < len(st["schedule"]) and trainer.epoch >= st["schedule"][st["done"]]:
            run_step(self, trainer)
            setup.attach(trainer, st)
        self.hooks.sync(trainer, st)

    def on_train_epoch_end(self, trainer) -> None:
        """This epoch's size columns for results.csv and every logger (added by :class:`PruneTrainerMixin` after
        each validation, which replaces ``trainer.metrics``; here they refresh the dict of epochs without one)."""
        self.info = self.info or model_info(student_of(trainer.model), FLOPS_IMGSZ)
        trainer.prune_metrics = report.epoch_columns(self.info, self.state, student_of(trainer.model))
        if isinstance(trainer, PruneTrainerMixin):
            if isinstance(getattr(trainer, "metrics", None), dict):  # rank 0 only
                trainer.metrics.update(trainer.prune_metrics)
        elif not self._told_no_columns:
            LOGGER.info(
                f"yolo-prune: {type(trainer).__name__} has no PruneTrainerMixin, so results.csv and loggers get no "
                f"model/params_M, model/GFLOPs columns (trainer.prune_metrics has them)"
            )
            self._told_no_columns = True

    def on_train_end(self, trainer) -> None:
        """Before/after table of the run's pruning, and a warning if the schedule did not finish."""
        st = self.state
        if not st or self.kept_only:
            return
        now = self.info or model_info(student_of(trainer.model), FLOPS_IMGSZ)
        report.warn_unfinished(trainer, st, now)
        report.warn_needs_plugin(trainer)
        if st["history"]:
            LOGGER.info(report.summary(trainer, st, now))

    @property
    def callbacks(self) -> dict[str, Callable]:
        """Event -> handler, for ``trainer.add_callback`` / ``model.add_callback``."""
        return {
            "on_pretrain_routine_start": self.on_pretrain_routine_start,
            "on_pretrain_routine_end": self.on_pretrain_routine_end,
            "on_train_epoch_start": self.on_train_epoch_start,
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_train_end": self.on_train_end,
        }
