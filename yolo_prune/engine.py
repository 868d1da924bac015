"""Channel pruning engine: torch-pruning's DependencyGraph on Ultralytics YOLO detection models.

Pruning is split in two so the trainer can decide once and apply everywhere:

* :class:`ChannelPruner` traces one model, ranks the channels of every coupled group with an importance criterion and
  returns a :class:`PrunePlan` (root layer name -> channel indices to remove), for a per-layer ratio or a GFLOPs target.
* :func:`apply_plan` removes those channels from any structurally identical model: the live model, its EMA copy, or
  the model on another DDP rank. The plan is plain data, so it can be broadcast.

The pieces live along torch-pruning's seams: tracing and grouping in :mod:`yolo_prune.graph`, cost models in
:mod:`yolo_prune.costs`, per-group allocation in :mod:`yolo_prune.allocate`, the plan and its application in
:mod:`yolo_prune.plan`. This module ties them together and re-exports their public names, so
``from yolo_prune.engine import X`` keeps working for everything that used to live here.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from ultralytics.nn.modules.block import Attention
from ultralytics.nn.tasks import ClassificationModel, DetectionModel
from ultralytics.utils.torch_utils import get_flops, unwrap_model

from .allocate import removed_for_cost, removed_for_latency, removed_for_target, removed_global, removed_uniform
from .blocks import C2fSplit, C2PSASplit, fold_model
from .cfg import PRUNE_DEFAULTS, PruneError
from .costs import CostModel, FlopsCost, LatencyCost
from .graph import (
    CUSTOMIZED_PRUNERS,
    SUPPORTED_BLOCKS,
    SUPPORTED_HEADS,
    SUPPORTED_MODELS,
    TRACE_IMGSZ,
    build_graph,
    check_supported,
    ignored_modules,
    match_layer,
    output_layers,
    prepare_model,
    tracing_mode,
)
from .importance import GRADIENT_METHODS, accumulate_gradients, get_importance
from .latency import LatencyTable, Runtime, build_table, measure_models
from .plan import PrunePlan, _apply, apply_plan, check_forward, kept_channels

__all__ = [
    # defined here
    "ChannelPruner",
    "detection_loss",
    "layer_widths",
    "model_info",
    "options_from_cfg",
    "plan_for_latency",
    "plan_for_target",
    "prune_model",
    # re-exported from graph, costs and plan (they used to live here)
    "CUSTOMIZED_PRUNERS",
    "SUPPORTED_BLOCKS",
    "SUPPORTED_HEADS",
    "SUPPORTED_MODELS",
    "TRACE_IMGSZ",
    "CostModel",
    "FlopsCost",
    "PrunePlan",
    "apply_plan",
    "build_graph",
    "check_forward",
    "check_supported",
    "ignored_modules",
    "kept_channels",
    "match_layer",
    "output_layers",
    "prepare_model",
    "tracing_mode",
]


def options_from_cfg(cfg: dict) -> dict:
    """ChannelPruner / plan_for_target keyword options from validated yolo-prune keys."""
    return {
        "ignore": cfg.get("prune_ignore") or (),
        "layer_ratios": cfg.get("prune_layers") or {},
        "global_rank": bool(cfg.get("prune_global")),
        "max_ratio": cfg.get("prune_max_ratio") or PRUNE_DEFAULTS["prune_max_ratio"],
        "sensitivity": cfg.get("prune_sensitivity"),
    }


class ChannelPruner:
    """Dependency graph, coupled groups and channel ranking of one model state.

    Args:
        model: A prepared Ultralytics detection model (see :func:`prepare_model`).
        method: Importance criterion name (``prune_method``). Gradient criteria read ``param.grad`` as it is now.
        round_to: Kept channel counts are multiples of this (``prune_round``).
        ignored_layers: Extra modules whose output channels must stay intact.
        ignore: ``prune_ignore`` keys (layer indices or module names) kept intact.
        layer_ratios: ``prune_layers``: fixed channel ratios for the groups rooted in these layers.
        global_rank: ``prune_global``: rank channels across groups instead of one ratio for all.
        max_ratio: ``prune_max_ratio``: with ``global_rank``, the most any group may lose.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "l2",
        round_to: int = PRUNE_DEFAULTS["prune_round"],
        ignored_layers=(),
        ignore=(),
        layer_ratios: dict | None = None,
        global_rank: bool = False,
        max_ratio: float = PRUNE_DEFAULTS["prune_max_ratio"],
    ):
        self.model = unwrap_model(model)
        self.round_to = int(round_to)
        self.global_rank, self.max_ratio = global_rank, max_ratio
        self.importance = get_importance(method)
        self.graph = build_graph(self.model)
        names = self.graph._module2name
        ignored = output_layers(self.model) + list(ignored_layers) + ignored_modules(self.model, ignore)
        ignored += [m for m in self.model.modules() if isinstance(m, Attention)]
        self.groups = []  # (root name, channel ranking ascending, group, scores ascending)
        with tracing_mode(self.model):
            for group in self.graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
                imp = self.importance(group)
                if imp is None:
                    continue
                imp = imp.detach().float().cpu()
                order = torch.argsort(imp)
                self.groups.append((names[group[0].dep.target.module], order.tolist(), group, imp[order].tolist()))
        self.fixed: dict[int, int] = {}  # group index -> channels removed, from layer_ratios
        for key, ratio in (layer_ratios or {}).items():
            hits = [g for g, (name, *_) in enumerate(self.groups) if match_layer(name, key)]
            if not hits:
                raise PruneError(f"prune_layers: {key!r} matches no prunable layer; accepted: {self.layer_keys()}")
            for g in hits:
                self.fixed[g] = len(self.groups[g][1]) - kept_channels(len(self.groups[g][1]), ratio, self.round_to)
        # stock C2f / C2PSA need equal halves: each split block's two groups move together unless ranked globally
        self.pairs = [] if global_rank else self._split_pairs(layer_ratios or {})
        # measured after ranking, on the unpruned model: allocators evaluate candidates on it without re-tracing
        self.flops_cost = FlopsCost(self.model, self.graph, [group for _, _, group, _ in self.groups])

    def _split_pairs(self, layer_ratios: dict) -> list[tuple[int | None, int | None]]:
        """Per split block, the groups owning its ``cv0`` and ``cv1`` output channels (None: not prunable).

        A block with a ``layer_ratios`` key inside it (e.g. ``model.2.cv0``) that fixes one of the two groups is left
        out: the user asked for that half alone, so the halves may differ (the block then folds to a yolo-prune class).
        """
        owner: dict[nn.Module, int] = {}
        for g, (_, _, group, _) in enumerate(self.groups):
            for dep, _ in group:
                if self.graph.is_out_channel_pruning_fn(dep.handler):
                    owner.setdefault(dep.target.module, g)
        pairs = []
        for name, block in self.model.named_modules():
            if not isinstance(block, (C2fSplit, C2PSASplit)):
                continue
            pair = (owner.get(block.cv0.conv), owner.get(block.cv1.conv))
            inside = [k for k in layer_ratios if str(k).startswith(name + ".")]  # int keys name whole layers
            if not any(g is not None and match_layer(self.groups[g][0], k) for k in inside for g in pair):
                pairs.append(pair)
        return pairs

    def lock(self, removed: list[int]) -> list[int]:
        """``removed`` with both halves of each split block at the same count: the smaller of the two, or none when one
        half cannot be pruned (e.g. the half feeding attention), so every block folds back to Ultralytics' class."""
        out = list(removed)
        for pair in self.pairs:
            n = 0 if None in pair else min(out[g] for g in pair)
            for g in pair:
                if g is not None:
                    out[g] = n
        return out

    def layer_keys(self) -> list[int]:
        """Ultralytics layer indices that hold at least one prunable group."""
        return sorted({int(name.split(".")[1]) for name, *_ in self.groups})

    def estimate_flops(self, removed: list[int]) -> float:
        """Conv + linear FLOPs (arbitrary units) if group ``g`` loses ``removed[g]`` channels (see :class:`FlopsCost`)."""
        return self.flops_cost.estimate(removed)

    def _removed(self, ratio: float) -> list[int]:
        """Channels to remove per group at one per-layer ``ratio`` (see :func:`~yolo_prune.allocate.removed_uniform`)."""
        return removed_uniform(self, ratio)

    def plan(self, ratio: float | None = None, flops_fraction: float | None = None) -> PrunePlan:
        """Plan a prune at a per-layer channel ``ratio``, or to keep ``flops_fraction`` of the current GFLOPs.

        With neither, only the fixed per-layer ratios (``layer_ratios``) are planned.
        """
        if ratio is None and flops_fraction is None:
            removed = [self.fixed.get(g, 0) for g in range(len(self.groups))]
        elif self.global_rank:
            removed = self.removed_global(ratio, flops_fraction)
        else:
            removed = self._removed(ratio) if flops_fraction is None else self.removed_for_flops(flops_fraction)
        return self.plan_removed(removed)

    def plan_removed(self, removed: list[int]) -> PrunePlan:
        """The plan that removes the ``removed[g]`` least important channels of each group ``g`` (split halves locked)."""
        removed = self.lock(removed)
        groups = [(name, sorted(order[:n])) for (name, order, *_), n in zip(self.groups, removed) if n > 0]
        est = self.estimate_flops(removed) / self.estimate_flops([0] * len(removed))
        total = sum(len(order) for _, order, *_ in self.groups)
        return PrunePlan(groups=groups, ratio=sum(removed) / max(total, 1), est_flops_fraction=est)

    def removed_for_flops(self, flops_fraction: float) -> list[int]:
        """Channels to remove per group so the estimated GFLOPs fraction lands closest to ``flops_fraction``.

        See :func:`~yolo_prune.allocate.removed_for_cost`, here on the FLOPs cost model.
        """
        return removed_for_cost(self, self.flops_cost, flops_fraction)

    def removed_global(self, ratio: float | None = None, flops_fraction: float | None = None) -> list[int]:
        """Channels to remove per group, ranked across all groups (``prune_global``), to ``ratio`` of all channels or
        the GFLOPs fraction ``flops_fraction`` (see :func:`~yolo_prune.allocate.removed_global`)."""
        return removed_global(self, self.flops_cost, ratio, flops_fraction)

    def apply(self, plan: PrunePlan) -> None:
        """Apply ``plan`` to this pruner's own model and fold it (see :func:`apply_plan`; the graph is stale after)."""
        _apply(self.model, self.graph, plan)
        fold_model(self.model)


def model_info(model: nn.Module, imgsz: int = 640) -> dict:
    """Parameters and GFLOPs (Ultralytics' counter) of ``model`` at ``imgsz``."""
    model = unwrap_model(model)
    return {"params": sum(p.numel() for p in model.parameters()), "gflops": get_flops(model, imgsz)}


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by module name."""
    return {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in unwrap_model(model).named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def plan_for_target(
    model: nn.Module,
    prune: float | None = None,
    ratio: float | None = None,
    method: str = "l2",
    round_to: int = PRUNE_DEFAULTS["prune_round"],
    imgsz: int = 640,
    ignored_layers=(),
    sensitivity: str | None = None,
    **options,
) -> PrunePlan:
    """Plan a prune of ``model`` (prepared) that removes the fraction ``prune`` of its GFLOPs, or uses ``ratio``.

    ``options`` are :class:`ChannelPruner`'s (``ignore``, ``layer_ratios``, ``global_rank``, ``max_ratio``) and
    ``sensitivity`` (a sensitivity.csv, for ``method="sensitivity"``). With neither ``prune`` nor ``ratio``, only the
    fixed ``layer_ratios`` are planned. For a GFLOPs target the estimate is checked against Ultralytics' counter on a
    pruned copy and re-aimed up to twice, since non-conv ops and rounding shift the real figure by a point or two.
    """
    if method in GRADIENT_METHODS and not any(p.grad is not None for p in model.parameters()):
        raise PruneError(
            f"prune_method={method} ranks channels by gradients, and none were accumulated; accepted: pass data= "
            f"(one-shot) or prune while training"
        )
    pruner = ChannelPruner(model, method=method, round_to=round_to, ignored_layers=ignored_layers, **options)
    if method == "sensitivity":
        if prune is None:
            raise PruneError("prune_method=sensitivity plans for a GFLOPs target; accepted: prune=<0-1>")
        # the sensitivity table allocates the per-layer ratios
        plan = pruner.plan_removed(removed_for_target(pruner, sensitivity, 1.0 - prune))
        plan.est_flops_fraction = get_flops(apply_plan(copy.deepcopy(model), plan), imgsz) / get_flops(model, imgsz)
        return plan
    if prune is None:
        return pruner.plan(ratio=ratio)
    base = get_flops(model, imgsz)
    target = 1.0 - prune
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
    ratio: float | None = None,
    method: str = "l2",
    round_to: int = PRUNE_DEFAULTS["prune_round"],
    imgsz: int = 640,
    ignored_layers=(),
    batches=None,
    latency: float | None = None,
    runtime: Runtime | None = None,
    **options,
) -> PrunePlan:
    """Prune an Ultralytics detection model in place; returns the plan that was applied.

    Args:
        model: ``DetectionModel`` (or a ``YOLO`` wrapper's ``.model``), built from a yaml or loaded from a .pt.
        prune: Fraction of GFLOPs to remove (0 < prune < 1), measured at ``imgsz``.
        ratio: Plain per-layer channel ratio instead of ``prune``.
        method: Importance criterion (``l1``, ``l2``, ``bn``, ``taylor``, ``lamp``, ``fpgm``, ``hessian``, ``random``,
            ``sensitivity``).
        round_to: Kept channel counts are multiples of this.
        batches: Training batches (Ultralytics batch dicts, preprocessed) for ``taylor`` / ``hessian``.
        latency: Instead of ``prune``: the fraction of the measured latency on ``runtime`` to remove; the returned
            plan's ``latency`` holds the predicted and measured milliseconds before and after.
        runtime: Where latency is measured (:class:`~yolo_prune.latency.Runtime`; ONNX Runtime at ``imgsz`` by default).
        options: ``ignore``, ``layer_ratios``, ``global_rank``, ``max_ratio``, ``sensitivity`` (see ChannelPruner).
    """
    if sum(x is not None for x in (prune, ratio, latency)) > 1:
        raise PruneError("prune: give one of prune=<GFLOPs fraction>, prune_ratio=<channel ratio> or prune_latency")
    if prune is None and ratio is None and latency is None and not options.get("layer_ratios"):
        raise PruneError("prune: give prune=<GFLOPs fraction>, prune_ratio=<channel ratio> or prune_layers")
    model = unwrap_model(
        getattr(model, "model", model) if not isinstance(model, (DetectionModel, ClassificationModel)) else model
    )
    check_supported(model)
    prepare_model(model)
    if method in GRADIENT_METHODS and batches is not None:
        saved = {k: model.__dict__[k] for k in ("args", "criterion") if k in model.__dict__}
        accumulate_gradients(model, batches, detection_loss(model), GRADIENT_METHODS[method])
        for k in ("args", "criterion"):  # leave the model's args and loss as they were (checkpoints pickle them)
            model.__dict__.pop(k, None)
        model.__dict__.update(saved)
    try:
        if latency is not None:
            rt = runtime or Runtime(imgsz=imgsz)
            options.pop("sensitivity", None)  # latency allocates by importance per millisecond, not by a table
            plan, info = plan_for_latency(model, latency, rt, method, round_to, ignored_layers, **options)
            plan.latency = info
        else:
            plan = plan_for_target(model, prune, ratio, method, round_to, imgsz, ignored_layers, **options)
    finally:
        model.zero_grad(set_to_none=True)
    apply_plan(model, plan)
    check_forward(model)
    return plan


MEASURE_TOLERANCE = 0.02  # measured latency ratio within 2 points of the target: 2x lands in 1.92x-2.08x


def plan_for_latency(
    model: nn.Module,
    fraction: float,
    rt: Runtime,
    method: str = "l2",
    round_to: int = 16,
    ignored_layers=(),
    table: LatencyTable | None = None,
    keep_ms: float | None = None,
    base_ms: float | None = None,
    measure: bool = True,
    **options,
) -> tuple[PrunePlan, dict]:
    """Plan a prune of ``model`` (prepared) that removes ``fraction`` of its latency on ``rt``; returns (plan, info).

    Channels go by importance lost per predicted millisecond saved (:func:`removed_for_latency`) until the predicted
    latency reaches ``keep_ms`` (default: ``1 - fraction`` of the model's own). With ``measure`` the pruned model is
    exported and timed against the unpruned one on ``rt`` (interleaved), and the prediction re-aimed up to twice
    until the measured ratio is within 2 points of the target; ``info`` carries predicted and measured milliseconds.
    PruneError if the target cannot be reached, with the best reachable fraction.
    """
    pruner = ChannelPruner(model, method=method, round_to=round_to, ignored_layers=ignored_layers, **options)
    max_ratio = pruner.max_ratio
    table = table or build_table(model, rt, round_to)
    cost = LatencyCost(pruner, table)
    target = keep_ms if keep_ms is not None else (1 - fraction) * cost.base

    def solve(aim: float):
        removed = removed_for_latency(pruner, cost, aim, max_ratio)
        return removed, cost.estimate(removed)

    removed, pred = solve(target)
    if pred > target + 0.01 * cost.base:
        reach = 1 - pred / (base_ms or cost.base)  # of the run's starting latency (training) or the model's
        raise PruneError(
            f"prune_latency={fraction:g} cannot be reached on {rt.name} at imgsz {rt.imgsz}: the model's convs can "
            f"give at most {max(reach, 0):.2f} of its latency (prune_round={round_to}, prune_max_ratio={max_ratio}); "
            f"accepted: prune_latency <= {max(reach, 0):.2f}"
        )
    plan = pruner.plan_removed(removed)
    info = {
        "runtime": rt.name,
        "device": rt.device,
        "threads": rt.threads,
        "imgsz": rt.imgsz,
        "batch": rt.batch,
        "table": str(table.path),
        "table_shapes_timed": table.timed,
        "fixed_ms": round(table.fixed_ms, 3),
        "predicted_ms": [round(cost.base, 3), round(pred, 3)],
    }
    if not measure:
        return plan, info
    want = target / cost.base  # the measured ratio pruned / unpruned to reach
    aim, best, runners = target, None, {}
    for _ in range(3):
        runners.pop("pruned", None)  # the unpruned model's export is reused across re-aims
        ms = measure_models({"base": model, "pruned": apply_plan(copy.deepcopy(model), plan)}, rt, runners=runners)
        ratio = ms["pruned"] / ms["base"]
        if best is None or abs(ratio - want) < abs(best[1] - want):
            best = (plan, ratio, ms, pred)
        if abs(ratio - want) <= MEASURE_TOLERANCE:
            break
        aim *= want / ratio  # the prediction was off by this much on this machine: aim where the measurement lands
        removed, pred = solve(aim)
        plan = pruner.plan_removed(removed)
    plan, ratio, ms, pred = best
    info.update(
        predicted_ms=[round(cost.base, 3), round(pred, 3)],
        measured_ms=[round(ms["base"], 3), round(ms["pruned"], 3)],
        measured_speedup=round(1 / ratio, 3),
    )
    return plan, info
