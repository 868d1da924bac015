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
from .engine import (
    check_forward,
    check_supported,
    ignored_modules,
    model_info,
    options_from_cfg,
    plan_for_target,
    prepare_model,
)
from .importance import GRAD_BATCHES, GRADIENT_METHODS, accumulate_gradients
from .schedule import make_schedule
from .sparsity import BNSparsity, penalised_norms
from .trainer import apply_step, broadcast_plan, renew_ema, trainer_batches, trainer_loss
from .unstructured import MaskKeeper, apply_masks, masks_from_zeros, sparsify, sparsity

SCHEDULE_DEFAULTS: dict[str, Any] = {"prune_steps": None, "prune_start": None, "prune_end": None}
FLOPS_IMGSZ = 640  # GFLOPs are reported at 640 like Ultralytics' model info; the pruned fraction barely depends on it
DISTILL_MESSAGE = (
    "prune steps during distillation are not supported (Ultralytics sizes the distillation projectors to the student's "
    "widths when training starts); accepted: prune first ('yolo-prune prune'), then train the pruned .pt with "
    "distill_model="
)


def _zeroes_weights(state: dict) -> bool:
    """Whether a schedule zeroes weights (unstructured / 2:4) instead of removing channels (checkpoints before the
    modes existed carry no ``mode``: structured)."""
    return state.get("mode", "structured") != "structured"


def check_train_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate yolo-prune training keys (pruning keys + schedule keys); returns them with defaults filled in."""
    schedule = {k: args[k] for k in SCHEDULE_DEFAULTS if k in args}
    cfg = check_prune_args({k: v for k, v in args.items() if k not in SCHEDULE_DEFAULTS})
    if cfg["prune_ratio"] is not None:
        raise PruneError(
            "prune_ratio is for one-shot 'yolo-prune prune'; accepted in training: prune=<GFLOPs fraction>"
        )
    if cfg["prune_mode"] == "2:4":  # 2 of every 4 weights, at once: there is no amount and no gradual schedule
        if cfg["prune"] not in (None, 0.5):
            raise PruneError(
                f"prune={cfg['prune']} does not apply to prune_mode=2:4 (always 50%); accepted: leave it out"
            )
        if schedule.get("prune_steps") not in (None, 1):
            raise PruneError("prune_steps must be 1 with prune_mode=2:4; accepted: prune_steps=1 or leave it out")
        cfg["prune"], schedule["prune_steps"] = 0.5, 1
    return {**cfg, **SCHEDULE_DEFAULTS, **schedule}


class PruneCallbacks:
    """Prune ``prune`` of the GFLOPs in ``prune_steps`` steps between ``prune_start`` and ``prune_end``.

    With no ``prune`` key the callbacks only continue a schedule found in a resumed checkpoint.
    """

    def __init__(self, **keys: Any):
        self.cfg = check_train_args(keys)
        self.state: dict | None = None
        self._info: dict | None = None
        self.sparsity: BNSparsity | None = None  # proximal L1 on BN scales while steps remain
        self.keeper: MaskKeeper | None = None  # unstructured / 2:4: keeps zeroed weights at zero

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
            if type(model).__name__ == "DistillationModel":
                raise PruneError(DISTILL_MESSAGE)
            check_supported(model)
            info = model_info(model, FLOPS_IMGSZ)
            schedule = make_schedule(
                self.cfg["prune"],
                trainer.epochs,
                self.cfg["prune_steps"],
                self.cfg["prune_start"],
                self.cfg["prune_end"],
            )
            options = options_from_cfg(self.cfg)
            options["sensitivity"] = str(options["sensitivity"]) if options["sensitivity"] else None
            state = {
                "prune": self.cfg["prune"],
                "method": self.cfg["prune_method"],
                "round": self.cfg["prune_round"],
                "mode": self.cfg["prune_mode"],
                "lambda": self.cfg["prune_sparsity"],
                "options": options,
                "schedule": schedule.epochs,
                "base": info,
                "done": 0,
                "history": [],
            }
            what = (
                f"{state['prune']:.0%} of {info['gflops']:.2f} GFLOPs"
                if state["mode"] == "structured"
                else f"{state['prune']:.0%} of the weights ({state['mode']})"
            )
            LOGGER.info(
                f"yolo-prune: removing {what} in {schedule.steps} steps at epochs {[e + 1 for e in schedule.epochs]} "
                f"({state['method']}, round {state['round']}"
                + (f", sparsity lambda {state['lambda']:g})" if state["lambda"] else ")")
            )
        else:
            return
        self.state = model.prune_state = state
        if trainer.ema is not None:
            trainer.ema.ema.prune_state = state
        self._info = model_info(model, FLOPS_IMGSZ)
        if _zeroes_weights(state) and state["done"]:  # resumed: the masks are the zeros
            self.keeper = MaskKeeper(model, masks_from_zeros(model, state["mode"]))

    def on_train_epoch_start(self, trainer) -> None:
        """Run every step scheduled at or before this epoch that has not run yet."""
        st = self.state
        while st is not None and st["done"] < len(st["schedule"]) and trainer.epoch >= st["schedule"][st["done"]]:
            self.step(trainer)
        if st is not None:
            self._sync_hooks(trainer)

    def _sync_hooks(self, trainer) -> None:
        """Keep the optimizer step hooks on the current optimizer: sparsity while steps remain, masks throughout."""
        st = self.state
        if self.keeper is not None and self.keeper.optimizer is not trainer.optimizer:
            self.keeper.attach(trainer.optimizer)
        want = st.get("lambda", 0.0) > 0 and st["done"] < len(st["schedule"])
        if not want:
            if self.sparsity is not None:
                self.sparsity.detach()
                self.sparsity = None
            return
        if self.sparsity is None or self.sparsity.optimizer is not trainer.optimizer:
            model = unwrap_model(trainer.model)
            exclude = ignored_modules(model, st["options"]["ignore"])
            if self.sparsity is not None:
                self.sparsity.detach()
            self.sparsity = BNSparsity(penalised_norms(model, exclude), st["lambda"])
            self.sparsity.attach(trainer.optimizer)

    def on_train_epoch_end(self, trainer) -> None:
        """Add params and GFLOPs to this epoch's results.csv row.

        ``trainer.lr`` is the one dict that ``save_metrics`` writes besides losses and validation metrics, which have
        fixed keys; Ultralytics' results plot only draws loss/metric columns, so these extra columns are safe.
        """
        if self._info is None:
            self._info = model_info(trainer.model, FLOPS_IMGSZ)
        trainer.lr["model/params_M"] = round(self._info["params"] / 1e6, 6)  # results.csv writes %.6g
        trainer.lr["model/GFLOPs"] = round(self._info["gflops"], 4)
        if self.state and _zeroes_weights(self.state):
            trainer.lr["model/sparsity"] = round(sparsity(trainer.model, self.state["mode"]), 4)

    def on_train_end(self, trainer) -> None:
        """Before/after table of the run's pruning."""
        st = self.state
        if not st or not st["history"]:
            return
        col = "sparsity" if _zeroes_weights(st) else "reduction"
        lines = [f"{'step':>6}{'epoch':>7}{'params':>12}{'GFLOPs':>9}{col:>11}{'seconds':>9}"]
        lines.append(f"{'start':>6}{'':>7}{st['base']['params']:>12,}{st['base']['gflops']:>9.2f}{0:>11.1%}{'':>9}")
        for h in st["history"]:
            red = h["sparsity"] if "sparsity" in h else 1 - h["gflops"] / st["base"]["gflops"]
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
        if _zeroes_weights(st):
            self._sparsify_step(trainer, k, n)
        else:
            self._structured_step(trainer, model, k, n, before)
        self._info = after = model_info(model, FLOPS_IMGSZ)
        seconds = time.perf_counter() - t0
        st["done"] = k
        record = {"step": k, "epoch": trainer.epoch, **after, "seconds": round(seconds, 2)}
        if _zeroes_weights(st):
            record["sparsity"] = round(sparsity(model, st["mode"]), 4)
        st["history"].append(record)
        # best.pt must never be an earlier, larger model: fitness tracking restarts with each step
        trainer.best_fitness = None
        trainer.stopper.best_fitness, trainer.stopper.best_epoch = 0.0, trainer.epoch  # 0.0: None raises TypeError
        change = (
            f"sparsity {record['sparsity']:.1%}"
            if "sparsity" in record
            else f"params {before['params']:,} -> {after['params']:,}, GFLOPs {before['gflops']:.2f} -> "
            f"{after['gflops']:.2f} ({1 - after['gflops'] / st['base']['gflops']:.1%} of the original removed)"
        )
        LOGGER.info(f"yolo-prune: step {k}/{n} at epoch {trainer.epoch + 1}: {change}, {seconds:.1f}s")
        self._save_last(trainer)

    def _structured_step(self, trainer, model, k: int, n: int, before: dict) -> None:
        st = self.state
        keep = (1 - st["prune"] * k / n) * st["base"]["gflops"]  # of the original; linear in GFLOPs
        options = dict(st.get("options") or {})
        # prune_layers ratios are of the original widths: step k takes the share that brings layer l to r*k/n
        options["layer_ratios"] = {
            key: 1 - (1 - r * k / n) / (1 - r * (k - 1) / n) for key, r in (options.get("layer_ratios") or {}).items()
        }
        prepare_model(model)
        plan = None
        if RANK in {-1, 0}:
            if st["method"] in GRADIENT_METHODS:  # rank by gradients of real training batches at today's weights
                used = accumulate_gradients(
                    model, trainer_batches(trainer, GRAD_BATCHES), trainer_loss(trainer), GRADIENT_METHODS[st["method"]]
                )
                LOGGER.info(f"yolo-prune: {st['method']} importance from the gradients of {used} training batches")
            try:
                plan = plan_for_target(
                    model,
                    prune=1 - keep / before["gflops"],
                    method=st["method"],
                    round_to=st["round"],
                    imgsz=FLOPS_IMGSZ,
                    **options,
                )
            finally:
                model.zero_grad(set_to_none=True)  # the first backward of the epoch must not add to these
        plan = broadcast_plan(plan)
        apply_step(trainer, plan)
        check_forward(model)

    def _sparsify_step(self, trainer, k: int, n: int) -> None:
        """Unstructured / 2:4 step: zero weights (same masks on every rank: the weights are identical), mask the EMA."""
        st = self.state
        model = unwrap_model(trainer.model)
        masks = sparsify(model, st["prune"] * k / n, st["mode"])
        if trainer.ema is not None:
            apply_masks(trainer.ema.ema, masks)
            trainer.ema = renew_ema(trainer.ema, model)  # prune.remove swapped weight storage: drop cached pairs
        self.keeper = MaskKeeper(model, masks)
        self.keeper.attach(trainer.optimizer)

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
