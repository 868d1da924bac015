"""One prune step between epochs: plan on rank 0, broadcast, apply to the model and its EMA, rebuild what held the old
tensors, record it, and write ``last.pt``.

The step reads and updates the run's :class:`~yolo_prune.PruneCallbacks` (``run``): its ``state``, the model
measurements ``info``, the latency run and the optimizer hooks.
"""

from __future__ import annotations

import copy
import time

from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from ..cfg import PruneError
from ..checkpoint import is_distilling, student_of
from ..engine.graph import prepare_model
from ..engine.importance import GRAD_BATCHES, GRADIENT_METHODS, accumulate_gradients
from ..engine.plan import check_forward
from ..engine.pruner import model_info
from ..engine.targets import plan_for_target
from ..engine.unstructured import apply_masks, sparsify, sparsity
from .ddp import broadcast_from_rank0
from .distill import check_projectors, hooks_off, refresh_teacher
from .latency_run import report_line
from .schedule import warn_if_missed
from .state import zeroes_weights
from .surgery import apply_step, renew_ema, save_after_step, trainer_batches, trainer_loss

FLOPS_IMGSZ = 640  # GFLOPs are reported at 640 like Ultralytics' model info; the pruned fraction barely depends on it
MAP_KEYS = ("metrics/mAP50-95(B)", "metrics/accuracy_top1")  # what the summary reports, per task (classify: top1)


def run_step(run, trainer) -> None:
    """Step ``done + 1``, with the distillation hooks off while the student is traced and copied."""
    with hooks_off(trainer):
        _step(run, trainer)
    if is_distilling(trainer.model):
        check_projectors(unwrap_model(trainer.model))
    save_after_step(trainer)


def map_before(trainer) -> float | None:
    """mAP50-95 (classify: top-1 accuracy) of the model just before the first step, on rank 0.

    The last epoch's validation when it validated this model; otherwise (a step at the first epoch of a run or
    resume, ``val=False``) a validation of a copy of the EMA now, with a validator of its own: the trainer's needs
    loss items that exist only after the first batch.
    """
    if RANK not in {-1, 0}:
        return None
    metrics = getattr(trainer, "metrics", None)
    if not (trainer.args.val and trainer.epoch > trainer.start_epoch and isinstance(metrics, dict)):
        if trainer.world_size > 1:  # a validation on rank 0 alone would meet the other ranks' collectives
            return None
        args = copy.copy(trainer.args)
        args.plots, args.save_json = False, False
        validator = type(trainer.validator)(trainer.test_loader, save_dir=trainer.save_dir, args=args)
        metrics = validator(model=copy.deepcopy(student_of(trainer.ema.ema if trainer.ema else trainer.model)))
    found = [metrics[k] for k in MAP_KEYS if k in (metrics or {})]
    return round(float(found[0]), 4) if found else None


def _step(run, trainer) -> None:
    st = run.state
    if st["done"] == 0:
        st["base"]["map50_95"] = map_before(trainer)
        if st.get("distill") == "self":
            refresh_teacher(trainer)
    t0 = time.perf_counter()
    model = student_of(trainer.model)
    k, n = st["done"] + 1, len(st["schedule"])
    before = run.info or model_info(model, FLOPS_IMGSZ)
    report = None if zeroes_weights(st) else _structured(run, trainer, model, k, n, before)
    if zeroes_weights(st):
        _sparsify(run, trainer, k, n)
    run.info = after = model_info(model, FLOPS_IMGSZ)
    seconds = time.perf_counter() - t0
    st["done"] = k
    record = {"step": k, "epoch": trainer.epoch, **after, "seconds": round(seconds, 2)}
    if zeroes_weights(st):
        record["sparsity"] = round(sparsity(model, st["cfg"]["prune_mode"]), 4)
    if report:
        record["latency"] = report
    st["history"].append(record)
    # best.pt must never be an earlier, larger model: fitness tracking restarts with each step
    trainer.best_fitness = None
    trainer.stopper.best_fitness, trainer.stopper.best_epoch = 0.0, trainer.epoch  # 0.0: None raises TypeError
    _log(st, record, before, after, k, n, trainer.epoch)
    if report and "measured_ms" in report:
        LOGGER.info(report_line(st, report))


def _log(st: dict, record: dict, before: dict, after: dict, k: int, n: int, epoch: int) -> None:
    change = (
        f"sparsity {record['sparsity']:.1%}"
        if "sparsity" in record
        else f"params {before['params']:,} -> {after['params']:,}, GFLOPs {before['gflops']:.2f} -> "
        f"{after['gflops']:.2f} ({1 - after['gflops'] / st['base']['gflops']:.1%} of the original removed)"
    )
    LOGGER.info(f"yolo-prune: step {k}/{n} at epoch {epoch + 1}: {change}, {record['seconds']:.1f}s")
    prune = st["cfg"]["prune"]
    if not zeroes_weights(st) and prune is not None:
        warn_if_missed(prune * k / n, st["base"]["gflops"], after["gflops"], f"step {k}/{n}")


def _structured(run, trainer, model, k: int, n: int, before: dict) -> dict | None:
    """Plan on rank 0 (GFLOPs or latency target), broadcast, apply; returns the latency report of a latency step."""
    st, cfg = run.state, run.state["cfg"]
    keep = (1 - (cfg["prune"] or 0) * k / n) * st["base"]["gflops"]  # of the original; linear in GFLOPs
    options = {key: cfg[key] for key in ("prune_ignore", "prune_layers", "prune_global", "prune_max_ratio")}
    # prune_layers ratios are of the original widths: step k takes the share that brings layer l to r*k/n
    options["prune_layers"] = {
        key: 1 - (1 - r * k / n) / (1 - r * (k - 1) / n) for key, r in (cfg["prune_layers"] or {}).items()
    }
    prepare_model(model)
    plan, report = None, None
    if RANK in {-1, 0}:
        if st["latency"]:  # before any gradients: the table's forward must not add to them
            run.latency.build(trainer, model, st["latency"], cfg["prune_round"], st["done"])
        method = cfg["prune_method"]
        if method in GRADIENT_METHODS:  # rank by gradients of real training batches at today's weights
            batches = trainer_batches(trainer, GRAD_BATCHES)
            used = accumulate_gradients(model, batches, trainer_loss(trainer), GRADIENT_METHODS[method])
            LOGGER.info(f"yolo-prune: {method} importance from the gradients of {used} training batches")
        try:
            if st["latency"]:
                plan, report = run.latency.plan(trainer, model, st, k, n, options)
            else:
                plan = plan_for_target(
                    model, prune=1 - keep / before["gflops"], prune_method=method, prune_round=cfg["prune_round"],
                    imgsz=FLOPS_IMGSZ, prune_sensitivity=cfg["prune_sensitivity"], **options,
                )  # fmt: skip
        except PruneError as e:  # a target refused mid-run: the other ranks wait in the broadcast for its line
            broadcast_from_rank0(str(e))
            raise
        finally:
            model.zero_grad(set_to_none=True)  # the first backward of the epoch must not add to these
    plan = broadcast_from_rank0(plan)
    if isinstance(plan, str):  # rank 0 refused: every rank stops with its line
        raise PruneError(plan)
    apply_step(trainer, plan)
    check_forward(model)
    return report


def _sparsify(run, trainer, k: int, n: int) -> None:
    """Unstructured / 2:4 step: zero weights (same masks on every rank: the weights are identical), mask the EMA."""
    cfg = run.state["cfg"]
    model = student_of(trainer.model)
    masks = sparsify(model, cfg["prune"] * k / n, cfg["prune_mode"])
    if trainer.ema is not None:
        apply_masks(student_of(trainer.ema.ema), masks)
        trainer.ema = renew_ema(trainer.ema, model)  # prune.remove swapped weight storage: drop cached pairs
    run.hooks.keep(model, masks, trainer.optimizer)
