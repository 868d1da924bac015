"""Planning to a target and pruning in one call: a GFLOPs fraction (:func:`plan_for_target`), a measured latency
fraction on a runtime (:func:`plan_for_latency`), and :func:`prune_model`, which plans and applies either.

Arguments are named as the keys of :mod:`yolo_prune.cfg` (``prune``, ``prune_ratio``, ``prune_latency``,
``prune_method``, ``prune_round``, ``prune_ignore``, ...), so a validated :class:`~yolo_prune.cfg.PruneConfig` passes
straight through.
"""

from __future__ import annotations

import copy

import numpy as np
import torch.nn as nn
from ultralytics.nn.tasks import ClassificationModel, DetectionModel
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import get_flops, unwrap_model

from ..cfg import KEYS, TARGETS, PruneConfig, PruneError
from .allocate import removed_for_cost, removed_for_latency, removed_for_target
from .costs import LatencyCost
from .graph import check_supported, prepare_model
from .importance import GRADIENT_METHODS, accumulate_gradients
from .latency import LatencyTable, build_table
from .plan import PrunePlan, apply_plan, check_forward
from .pruner import ChannelPruner
from .runtime import Runtime, clock_name, measure_models

ROUND = KEYS["prune_round"].default


def plan_for_target(
    model: nn.Module,
    prune: float | None = None,
    prune_ratio: float | None = None,
    prune_method: str = "l2",
    prune_round: int = ROUND,
    imgsz: int = 640,
    ignored_layers=(),
    prune_sensitivity: str | None = None,
    **options,
) -> PrunePlan:
    """Plan a prune of ``model`` (prepared) that removes the fraction ``prune`` of its GFLOPs, or uses ``prune_ratio``.

    For a GFLOPs target the estimate is checked against Ultralytics' counter on a pruned copy and re-aimed up to
    twice, since non-conv ops and rounding shift the real figure by a point or two.

    Args:
        model: A prepared model (:func:`~yolo_prune.engine.graph.prepare_model`).
        prune: Fraction of the GFLOPs at ``imgsz`` to remove.
        prune_ratio: Instead: one channel ratio for every group. With neither, only ``prune_layers`` is planned.
        prune_method: Importance criterion; ``sensitivity`` allocates per layer from ``prune_sensitivity``.
        prune_round: Kept channel counts are multiples of this.
        imgsz: Image size the GFLOPs are counted at.
        ignored_layers: Extra modules kept intact.
        prune_sensitivity: A sensitivity.csv, for ``prune_method="sensitivity"``.
        **options: :class:`~yolo_prune.engine.pruner.ChannelPruner`'s ``prune_ignore``, ``prune_layers``,
            ``prune_global``, ``prune_max_ratio``.

    Returns:
        The plan, with ``est_flops_fraction`` the GFLOPs fraction it really leaves.

    Raises:
        PruneError: A gradient criterion without gradients, or a sensitivity plan without ``prune``.
    """
    method = prune_method
    if method in GRADIENT_METHODS and not any(p.grad is not None for p in model.parameters()):
        raise PruneError(
            f"prune_method={method} ranks channels by gradients, and none were accumulated; accepted: pass data= "
            f"(one-shot) or prune while training"
        )
    pruner = ChannelPruner(model, method, prune_round, ignored_layers, **options)
    if method == "sensitivity":
        if prune is None:
            raise PruneError("prune_method=sensitivity plans for a GFLOPs target; accepted: prune=<0-1>")
        # the sensitivity table allocates the per-layer ratios
        plan = pruner.plan_removed(removed_for_target(pruner, prune_sensitivity, 1.0 - prune))
        plan.est_flops_fraction = get_flops(apply_plan(copy.deepcopy(model), plan), imgsz) / get_flops(model, imgsz)
        return plan
    if prune is None:
        return pruner.plan(ratio=prune_ratio)
    return _reaimed(model, pruner, 1.0 - prune, imgsz)


def _reaimed(model: nn.Module, pruner: ChannelPruner, target: float, imgsz: int) -> PrunePlan:
    """The plan whose real GFLOPs fraction (Ultralytics' counter on a pruned copy) is closest to ``target``, re-aimed
    up to twice from the analytic estimate."""
    base = get_flops(model, imgsz)
    aim = target
    best = None
    for _ in range(3):
        plan = pruner.plan(flops_fraction=min(max(aim, 0.01), 1.0))
        real = get_flops(apply_plan(copy.deepcopy(model), plan), imgsz) / base
        if best is None or abs(real - target) < abs(best[1] - target):
            best = (plan, real)
        if abs(real - target) <= 0.005:
            break
        aim += target - real
    plan, real = best
    plan.est_flops_fraction = real
    return plan


def _config(**keys) -> PruneConfig:
    """The keys ``prune_model`` got, validated by the one rule set (the CLI's), and only those it acts on."""
    cfg = PruneConfig.from_keys({k: v for k, v in keys.items() if v is not None}, mode="prune")
    other = [k for k in keys if k not in cfg.engine_options and k not in TARGETS + ("prune_method", "prune_round")]
    if other:
        raise PruneError(
            f"{other[0]} does not apply to prune_model (structured, one-shot); accepted: "
            f"{', '.join(cfg.engine_options)} (yolo-prune prune takes the others)"
        )
    return cfg


def _accumulate(model: nn.Module, batches, method: str) -> None:
    """Gradients of ``batches`` for a gradient criterion, leaving the model's args and loss as they were
    (checkpoints pickle them)."""
    saved = {k: model.__dict__[k] for k in ("args", "criterion") if k in model.__dict__}
    accumulate_gradients(model, batches, detection_loss(model), GRADIENT_METHODS[method])
    for k in ("args", "criterion"):
        model.__dict__.pop(k, None)
    model.__dict__.update(saved)


def detection_loss(model: nn.Module):
    """``batch -> scalar loss`` of an Ultralytics model, for gradient criteria outside a trainer.

    Checkpoints carry ``args`` as a dict, while the loss reads hyperparameters (box, cls, dfl) as attributes.
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils import IterableSimpleNamespace

    args = getattr(model, "args", None)
    if not hasattr(args, "box"):
        saved = args if isinstance(args, dict) else {}
        model.args = IterableSimpleNamespace(
            **{**DEFAULT_CFG_DICT, **{k: v for k, v in saved.items() if k in DEFAULT_CFG_DICT}}
        )
    return lambda batch: model.loss(batch)[0].sum()


def prune_model(
    model: nn.Module,
    prune: float | None = None,
    prune_ratio: float | None = None,
    prune_method: str = "l2",
    prune_round: int = ROUND,
    imgsz: int = 640,
    ignored_layers=(),
    batches=None,
    prune_latency: float | None = None,
    runtime: Runtime | None = None,
    **options,
) -> PrunePlan:
    """Prune an Ultralytics model in place (plan, apply, check both forwards); returns the plan that was applied.

    Args:
        model: ``DetectionModel`` (or any supported task's model, or a ``YOLO`` wrapper), from a yaml or a .pt.
        prune: Fraction of GFLOPs to remove (0 < prune < 1), measured at ``imgsz``.
        prune_ratio: Plain per-layer channel ratio instead of ``prune``.
        prune_method: Importance criterion (``l1``, ``l2``, ``bn``, ``taylor``, ``lamp``, ``fpgm``, ``hessian``,
            ``random``, ``sensitivity``).
        prune_round: Kept channel counts are multiples of this.
        imgsz: Image size the GFLOPs are counted at.
        ignored_layers: Extra modules kept intact.
        batches: Training batches (Ultralytics batch dicts, preprocessed) for ``taylor`` / ``hessian``.
        prune_latency: Instead of ``prune``: the fraction of the measured latency on ``runtime`` to remove; the
            returned plan's ``latency`` holds the predicted and measured milliseconds before and after.
        runtime: Where latency is measured (:class:`~yolo_prune.engine.runtime.Runtime`; ONNX Runtime by default).
        **options: ``prune_ignore``, ``prune_layers``, ``prune_global``, ``prune_max_ratio``, ``prune_sensitivity``.

    Returns:
        The plan that was applied.

    Raises:
        PruneError: Keys the config refuses, an unsupported model, or an unreachable latency target.
    """
    cfg = _config(prune=prune, prune_ratio=prune_ratio, prune_latency=prune_latency, prune_method=prune_method,
                  prune_round=prune_round, **options)  # fmt: skip
    method, ratio, latency, prune_round = cfg.prune_method, cfg.prune_ratio, cfg.prune_latency, cfg.prune_round
    prune, options = cfg.prune, cfg.engine_options
    model = unwrap_model(
        getattr(model, "model", model) if not isinstance(model, (DetectionModel, ClassificationModel)) else model
    )
    check_supported(model)
    prepare_model(model)
    if method in GRADIENT_METHODS and batches is not None:
        _accumulate(model, batches, method)
    try:
        if latency is not None:
            rt = runtime or Runtime(imgsz=imgsz)
            options.pop("prune_sensitivity", None)  # latency plans by its own table
            plan, info = plan_for_latency(model, latency, rt, method, prune_round, ignored_layers, **options)
            plan.latency = info
        else:
            plan = plan_for_target(model, prune, ratio, method, prune_round, imgsz, ignored_layers, **options)
    finally:
        model.zero_grad(set_to_none=True)
    apply_plan(model, plan)
    check_forward(model)
    return plan


MEASURE_TOLERANCE = 0.02  # measured latency ratio within 2 points of the target: 2x lands in 1.92x-2.08x
MEASURE_ROUNDS = 3  # interleaved timings a doubtful ratio is the median of
MAX_AIMS = 4  # plans measured at most (the first, then re-aims)
REAIM_STEP = 0.5  # each re-aim goes this part of the way (of the log ratio) from the measurement to the target


def plan_for_latency(
    model: nn.Module, prune_latency: float, rt: Runtime, prune_method: str = "l2", prune_round: int = ROUND,
    ignored_layers=(), table: LatencyTable | None = None, keep_ms: float | None = None, base_ms: float | None = None,
    measure: bool = True, reference: nn.Module | None = None, **options,
) -> tuple[PrunePlan, dict]:  # fmt: skip
    """Plan a prune of ``model`` (prepared) that removes ``prune_latency`` of its latency on ``rt``; (plan, info).

    One channel ratio for every layer is searched on the latency table (:func:`removed_for_cost`) to ``keep_ms``
    (default: ``1 - prune_latency`` of the model's own); ``prune_global`` ranks by importance per ms instead.
    With ``measure`` the pruned model is exported and timed against the unpruned one on ``rt`` (interleaved), and the prediction re-aimed
    until the measured ratio is within 2 points of the target (see :func:`_measured`: doubtful timings are repeated
    before a re-aim, and a re-aim goes part of the way); ``info`` has predicted and measured ms and every timing.
    In training, ``reference`` is the model the run started with (``base_ms`` its predicted ms): the pruned model
    is timed against it, so the target and the speed-up reported are the whole run's.

    Raises:
        PruneError: The target cannot be reached, with the best reachable fraction.
    """
    pruner = ChannelPruner(model, prune_method, prune_round, ignored_layers, **options)
    max_ratio, table = pruner.max_ratio, table or build_table(model, rt, prune_round)
    cost = LatencyCost(pruner, table)
    target = keep_ms if keep_ms is not None else (1 - prune_latency) * cost.base

    def solve(aim: float):
        ranked = pruner.global_rank  # one ratio scored far better: benchmarks/results/latency_allocation_screen.md
        removed = removed_for_latency(pruner, cost, aim, max_ratio) if ranked else \
            removed_for_cost(pruner, cost, aim / cost.base, at_most=True)  # fmt: skip
        return removed, cost.estimate(removed)

    removed, pred = solve(target)
    if pred > target + 0.01 * cost.base:
        reach = 1 - pred / (base_ms or cost.base)  # of the run's starting latency (training) or the model's
        raise PruneError(
            f"prune_latency={prune_latency:g} cannot be reached on {rt.name} at imgsz {rt.imgsz}: the model's convs "
            f"can give at most {max(reach, 0):.2f} of its latency (prune_round={prune_round}"
            f"{f', prune_max_ratio={max_ratio}' if pruner.global_rank else ''}); accepted: prune_latency <= "
            f"{max(reach, 0):.2f}"
        )
    plan = pruner.plan_removed(removed)
    info = _latency_info(rt, table, cost, pred)
    if not measure:
        return plan, info
    ref = (reference, base_ms) if reference is not None and base_ms else (model, cost.base)
    plan, ratio, ms, pred, ratios = _measured(model, ref, rt, pruner, plan, pred, target, solve)
    if abs(ratio - target / ref[1]) > MEASURE_TOLERANCE:  # the closest of MAX_AIMS plans, still off the target
        LOGGER.warning(
            f"yolo-prune: prune_latency={prune_latency:g} on {rt.name} reached {1 / ratio:.2f}x, not "
            f"{ref[1] / target:.2f}x, after {MAX_AIMS} measured plans (the table's predictions and this runtime's "
            f"timings disagree here); the plan kept is the closest"
        )
    info.update(
        predicted_ms=[round(ref[1], 3), round(pred, 3)],
        measured_against="start" if ref[0] is not model else "model",
        measured_ms=[round(ms["base"], 3), round(ms["pruned"], 3)],
        measured_speedup=round(1 / ratio, 3),
        measured_speedups=[round(1 / r, 3) for r in ratios],  # every timing of the plan kept: the spread
    )
    return plan, info


def _latency_info(rt: Runtime, table: LatencyTable, cost: LatencyCost, pred: float) -> dict:
    """prune_summary.json's ``latency`` before the closed loop: where and on which clock, the table, the prediction."""
    return {"runtime": rt.name, "device": rt.device, "threads": rt.threads, "imgsz": rt.imgsz, "batch": rt.batch,
            "clock": clock_name(rt.device, rt.threads), "table": str(table.path),
            "table_shapes_timed": table.timed, "fixed_ms": round(table.fixed_ms, 3),
            "predicted_ms": [round(cost.base, 3), round(pred, 3)]}  # fmt: skip


def _measured(model, ref: tuple[nn.Module, float], rt: Runtime, pruner: ChannelPruner, plan: PrunePlan,
              pred: float, target: float, solve):  # fmt: skip
    """Export and time the pruned ``model`` against ``ref`` (an unpruned model and its predicted ms), re-aiming until
    the measured ratio is within :data:`MEASURE_TOLERANCE` of the target; (plan, measured ratio, ms, predicted ms,
    every round's ratio).

    One timing on a shared machine can be off by more than the tolerance, so a plan is judged by the median of up to
    :data:`MEASURE_ROUNDS` interleaved timings: more are taken when the first disagrees with the table's prediction,
    or misses the target, before anything is re-aimed. A re-aim then moves :data:`REAIM_STEP` of the way (in log
    ratio) from where the measurement landed, so one outlier cannot send the plan far past the target.
    """
    base, base_pred = ref
    want = target / base_pred  # the measured ratio pruned / unpruned to reach
    aim, best, runners = target, None, {}
    for attempt in range(MAX_AIMS):
        runners.pop("pruned", None)  # the unpruned model's export is reused across re-aims
        pruned = apply_plan(copy.deepcopy(model), plan)
        ratios, times = [], []
        for _ in range(MEASURE_ROUNDS):
            ms = measure_models({"base": base, "pruned": pruned}, rt, runners=runners)
            ratios.append(ms["pruned"] / ms["base"])
            times.append(ms)
            first = ratios[0]
            if abs(first - pred / base_pred) <= MEASURE_TOLERANCE and abs(first - want) <= MEASURE_TOLERANCE:
                break  # agrees with the prediction and meets the target: one timing is enough
        ratio = float(np.median(ratios))  # of 1 or all 3 timings (an odd count: a timing that really happened)
        i = int(np.argsort(ratios)[len(ratios) // 2])  # the round whose ratio is the median: its milliseconds
        if best is None or abs(ratio - want) < abs(best[1] - want):
            best = (plan, ratio, times[i], pred, ratios)
        if abs(ratio - want) <= MEASURE_TOLERANCE or attempt == MAX_AIMS - 1:
            break
        aim *= (want / ratio) ** REAIM_STEP  # the prediction was off by this much here: go part of the way
        removed, pred = solve(aim)
        plan = pruner.plan_removed(removed)
    return best
