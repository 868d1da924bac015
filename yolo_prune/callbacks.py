"""Ultralytics trainer callbacks that prune between epochs while training fine-tunes what remains.

Written like ``ultralytics/utils/callbacks/*.py``: event handlers and a ``callbacks`` dict, with the settings held by an
instance instead of module globals so several trainers can run with different settings. The pruning state (schedule,
steps done, history) lives on the model as ``prune_state``, so it travels inside every checkpoint: ``resume=True``
continues the schedule with no plugin keys, and plugin keys never touch ``trainer.args``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from .cfg import PruneError, check_prune_args
from .engine import check_forward, check_supported, model_info, plan_for_target, prepare_model
from .schedule import make_schedule
from .trainer import apply_step, broadcast_plan

SCHEDULE_DEFAULTS: dict[str, Any] = {"prune_steps": None, "prune_start": None, "prune_end": None}
FLOPS_IMGSZ = 640  # GFLOPs are reported at 640 like Ultralytics' model info; the pruned fraction barely depends on it


def check_train_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate yolo-prune training keys (pruning keys + schedule keys); returns them with defaults filled in."""
    schedule = {k: args[k] for k in SCHEDULE_DEFAULTS if k in args}
    cfg = check_prune_args({k: v for k, v in args.items() if k not in SCHEDULE_DEFAULTS})
    if cfg["prune_ratio"] is not None:
        raise PruneError(
            "prune_ratio is for one-shot 'yolo-prune prune'; accepted in training: prune=<GFLOPs fraction>"
        )
    return {**cfg, **SCHEDULE_DEFAULTS, **schedule}


class PruneCallbacks:
    """Prune ``prune`` of the GFLOPs in ``prune_steps`` steps between ``prune_start`` and ``prune_end``.

    With no ``prune`` key the callbacks only continue a schedule found in a resumed checkpoint.
    """

    def __init__(self, **keys: Any):
        self.cfg = check_train_args(keys)
        self.state: dict | None = None
        self._info: dict | None = None

    # --- events ---------------------------------------------------------------------------------------------------
    def on_pretrain_routine_end(self, trainer) -> None:
        """Start a schedule, or pick up the one carried by a resumed checkpoint."""
        model = unwrap_model(trainer.model)
        state = getattr(model, "prune_state", None)
        if trainer.resume and state:  # a resumed run keeps its checkpoint's schedule, finished or not
            if self.cfg["prune"] not in (None, state["prune"]):
                LOGGER.warning(
                    f"yolo-prune: resume ignores prune={self.cfg['prune']}, continuing prune={state['prune']}"
                )
            LOGGER.info(f"yolo-prune: resuming with {state['done']}/{len(state['schedule'])} steps done")
        elif self.cfg["prune"] is not None:
            check_supported(model)
            info = model_info(model, FLOPS_IMGSZ)
            schedule = make_schedule(
                self.cfg["prune"],
                trainer.epochs,
                self.cfg["prune_steps"],
                self.cfg["prune_start"],
                self.cfg["prune_end"],
            )
            state = {
                "prune": self.cfg["prune"],
                "method": self.cfg["prune_method"],
                "round": self.cfg["prune_round"],
                "schedule": schedule.epochs,
                "base": info,
                "done": 0,
                "history": [],
            }
            LOGGER.info(
                f"yolo-prune: removing {state['prune']:.0%} of {info['gflops']:.2f} GFLOPs in {schedule.steps} steps "
                f"at epochs {[e + 1 for e in schedule.epochs]} ({state['method']}, round {state['round']})"
            )
        else:
            return
        self.state = model.prune_state = state
        if trainer.ema is not None:
            trainer.ema.ema.prune_state = state
        self._info = model_info(model, FLOPS_IMGSZ)

    def on_train_epoch_start(self, trainer) -> None:
        """Run every step scheduled at or before this epoch that has not run yet."""
        st = self.state
        while st is not None and st["done"] < len(st["schedule"]) and trainer.epoch >= st["schedule"][st["done"]]:
            self.step(trainer)

    def on_train_epoch_end(self, trainer) -> None:
        """Add params and GFLOPs to this epoch's results.csv row.

        ``trainer.lr`` is the one dict that ``save_metrics`` writes besides losses and validation metrics, which have
        fixed keys; Ultralytics' results plot only draws loss/metric columns, so these extra columns are safe.
        """
        if self._info is None:
            self._info = model_info(trainer.model, FLOPS_IMGSZ)
        trainer.lr["model/params_M"] = round(self._info["params"] / 1e6, 6)  # results.csv writes %.6g
        trainer.lr["model/GFLOPs"] = round(self._info["gflops"], 4)

    def on_train_end(self, trainer) -> None:
        """Before/after table of the run's pruning."""
        st = self.state
        if not st or not st["history"]:
            return
        lines = [f"{'step':>6}{'epoch':>7}{'params':>12}{'GFLOPs':>9}{'reduction':>11}{'seconds':>9}"]
        lines.append(f"{'start':>6}{'':>7}{st['base']['params']:>12,}{st['base']['gflops']:>9.2f}{0:>11.1%}{'':>9}")
        for h in st["history"]:
            red = 1 - h["gflops"] / st["base"]["gflops"]
            lines.append(
                f"{h['step']:>6}{h['epoch'] + 1:>7}{h['params']:>12,}{h['gflops']:>9.2f}{red:>11.1%}{h['seconds']:>9.1f}"
            )
        LOGGER.info("yolo-prune summary\n" + "\n".join(lines))

    # --- the step -------------------------------------------------------------------------------------------------
    def step(self, trainer) -> None:
        """One prune step: plan on rank 0, broadcast, apply to model and EMA, rebuild training state, checkpoint."""
        st = self.state
        t0 = time.perf_counter()
        model = unwrap_model(trainer.model)
        k, n = st["done"] + 1, len(st["schedule"])
        before = self._info or model_info(model, FLOPS_IMGSZ)
        keep = (1 - st["prune"] * k / n) * st["base"]["gflops"]  # of the original; linear in GFLOPs
        prepare_model(model)
        plan = None
        if RANK in {-1, 0}:
            plan = plan_for_target(
                model, prune=1 - keep / before["gflops"], method=st["method"], round_to=st["round"], imgsz=FLOPS_IMGSZ
            )
        plan = broadcast_plan(plan)
        apply_step(trainer, plan)
        check_forward(model)
        self._info = after = model_info(model, FLOPS_IMGSZ)
        seconds = time.perf_counter() - t0
        st["done"] = k
        st["history"].append({"step": k, "epoch": trainer.epoch, **after, "seconds": round(seconds, 2)})
        # best.pt must never be an earlier, larger model: fitness tracking restarts with each step
        trainer.best_fitness = None
        trainer.stopper.best_fitness, trainer.stopper.best_epoch = 0.0, trainer.epoch  # 0.0: None raises TypeError
        LOGGER.info(
            f"yolo-prune: step {k}/{n} at epoch {trainer.epoch + 1}: params {before['params']:,} -> {after['params']:,}, "
            f"GFLOPs {before['gflops']:.2f} -> {after['gflops']:.2f} "
            f"({1 - after['gflops'] / st['base']['gflops']:.1%} of the original removed), {seconds:.1f}s"
        )
        self._save_last(trainer)

    @staticmethod
    def _save_last(trainer) -> None:
        """Write last.pt now, as the state at the end of the previous epoch plus this prune.

        NaN recovery and resume reload last.pt into the live model; an unpruned last.pt would no longer fit it.
        """
        if RANK not in {-1, 0} or trainer.epoch == 0:  # before epoch 1 there is nothing to resume or recover from
            return
        epoch = trainer.epoch
        trainer.epoch = epoch - 1  # resume restarts at ckpt epoch + 1, i.e. this (pruned, untrained) epoch
        try:
            trainer.save_model()
        finally:
            trainer.epoch = epoch

    @property
    def callbacks(self) -> dict[str, Callable]:
        """Event -> handler, for ``trainer.add_callback`` / ``model.add_callback``."""
        return {
            "on_pretrain_routine_end": self.on_pretrain_routine_end,
            "on_train_epoch_start": self.on_train_epoch_start,
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_train_end": self.on_train_end,
        }
