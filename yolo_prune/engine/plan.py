"""The plan and applying it: which channels go (plain data) and their removal from any matching model.

A :class:`PrunePlan` is decided once (by :class:`~yolo_prune.engine.pruner.ChannelPruner`) and applied everywhere: the
live model, its EMA copy, the model on another DDP rank. It names root layers and channel indices only, so it can be
broadcast and re-applied to a freshly traced, structurally identical model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp
from ultralytics.utils.torch_utils import unwrap_model

from .blocks import fold_model
from .graph import TRACE_IMGSZ, build_graph, prepare_model


@dataclass
class PrunePlan:
    """Channels to remove, as plain data: ``groups`` is a list of (root layer name, channel indices)."""

    groups: list[tuple[str, list[int]]] = field(default_factory=list)
    ratio: float = 0.0  # per-layer channel ratio the plan was made with
    est_flops_fraction: float = 1.0  # estimated GFLOPs after / before (conv and linear layers)
    latency: dict | None = None  # prune_latency: runtime, predicted and measured milliseconds before / after

    @property
    def n_channels(self) -> int:
        """Total number of root channels removed."""
        return sum(len(i) for _, i in self.groups)


def kept_channels(channels: int, ratio: float, round_to: int) -> int:
    """Channels a layer keeps at per-layer ratio ``ratio``: a multiple of ``round_to``, at least ``round_to``."""
    if channels <= round_to:
        return channels
    keep = round(channels * (1.0 - ratio) / round_to) * round_to
    return int(min(channels, max(round_to, keep)))


def _apply(
    model: nn.Module, graph: tp.DependencyGraph, plan: PrunePlan, watch: dict[str, nn.Module] | None = None
) -> dict:
    """Prune ``plan``'s groups through ``graph`` (traced on ``model``), leaving frozen parameters frozen.

    Returns, for each ``watch`` name, the input channels (positions before the prune) its module keeps.
    """
    modules = dict(model.named_modules())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    watch = watch or {}
    kept = {k: list(range(m.weight.shape[1] * m.groups if isinstance(m, nn.Conv2d) else m.weight.shape[1]))
            for k, m in watch.items()}  # fmt: skip
    by_id = {id(m): k for k, m in watch.items()}
    with torch.no_grad():
        for name, idxs in plan.groups:
            layer = modules[name]
            handler = graph.get_pruner_of_module(layer).prune_out_channels
            group = graph.get_pruning_group(layer, handler, idxs)
            seen = set()
            for dep, removed in group:  # indices are positions in the layer as it is now, after earlier groups
                key = by_id.get(id(dep.target.module))
                if key is None or key in seen or graph.is_out_channel_pruning_fn(dep.handler):
                    continue
                seen.add(key)
                gone = {int(getattr(i, "idx", i)) for i in removed}
                kept[key] = [c for j, c in enumerate(kept[key]) if j not in gone]
            group.prune()
    for n, p in model.named_parameters():  # pruned tensors are new Parameters with requires_grad=True
        p.requires_grad_(n not in frozen)
    return kept


def apply_plan(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Remove the channels in ``plan`` from ``model`` in place (any model structurally identical to the planned one).

    The model is split for the prune and folded afterwards, so the live model, its EMA and every checkpoint hold one
    ``cv1`` conv per block (Ultralytics' own classes where the halves kept equal widths).
    """
    apply_plan_watching(model, plan)
    return unwrap_model(model)


def apply_plan_watching(model: nn.Module, plan: PrunePlan, watch: tuple[str, ...] = ()) -> dict[str, list[int]]:
    """:func:`apply_plan`, returning for each module name in ``watch`` (a conv or linear outside the split blocks) the
    input channels it keeps, as positions before the prune: what a layer fed by the same features from outside the
    model (a distillation projector) must keep."""
    model = prepare_model(unwrap_model(model))
    modules = dict(model.named_modules())
    kept = _apply(model, build_graph(model), plan, {k: modules[k] for k in watch})
    fold_model(model)
    return kept


def check_forward(model: nn.Module, imgsz: int = TRACE_IMGSZ) -> None:
    """Run the train() and eval() forwards once; a prune that broke either raises here, not mid-training.

    Runs on a copy: a train-mode forward would update BatchNorm running statistics with this dummy input.
    """
    model = copy.deepcopy(unwrap_model(model))
    p = next(model.parameters())
    x = torch.zeros(2, 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        for mode in (True, False):
            model.train(mode)
            model(x)
