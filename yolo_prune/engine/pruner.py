"""Ranking and planning on torch-pruning's DependencyGraph: :class:`ChannelPruner` traces one model, ranks the
channels of every coupled group with an importance criterion, and returns a :class:`~yolo_prune.engine.plan.PrunePlan`
for a removal per group that an allocator (:mod:`yolo_prune.engine.allocate`) chose.

The plan is applied by :func:`~yolo_prune.engine.plan.apply_plan` to any structurally identical model (the live model,
its EMA, another DDP rank's). Planning to a target (GFLOPs, latency) is :mod:`yolo_prune.engine.targets`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from ultralytics.utils.torch_utils import get_flops, unwrap_model

from ..cfg import KEYS, PruneError
from . import allocate
from .blocks import C2fSplit, C2PSASplit
from .costs import FlopsCost
from .graph import build_graph, match_layer, owners, prunable_groups, tracing_mode
from .importance import get_importance
from .plan import PrunePlan, kept_channels


class ChannelPruner:
    """Dependency graph, coupled groups and channel ranking of one model state.

    Args:
        model: A prepared Ultralytics model (see :func:`~yolo_prune.engine.graph.prepare_model`).
        prune_method: Importance criterion name. Gradient criteria read ``param.grad`` as it is now.
        prune_round: Kept channel counts are multiples of this.
        ignored_layers: Extra modules whose output channels must stay intact.
        prune_ignore: Layer indices or module names kept intact.
        prune_layers: Fixed channel ratios for the groups rooted in these layers.
        prune_global: Rank channels across groups instead of one ratio for all.
        prune_max_ratio: With ``prune_global``, the most any group may lose.

    Raises:
        PruneError: A ``prune_layers`` or ``prune_ignore`` key matches no layer.
    """

    def __init__(
        self,
        model: nn.Module,
        prune_method: str = KEYS["prune_method"].default,
        prune_round: int = KEYS["prune_round"].default,
        ignored_layers=(),
        prune_ignore=(),
        prune_layers: dict | None = None,
        prune_global: bool = False,
        prune_max_ratio: float = KEYS["prune_max_ratio"].default,
    ):
        self.model = unwrap_model(model)
        self.round_to = int(prune_round)
        self.global_rank, self.max_ratio = prune_global, prune_max_ratio
        self.importance = get_importance(prune_method)
        self.graph = build_graph(self.model)
        names = self.graph._module2name
        self.groups = []  # (root name, channel ranking ascending, group, scores ascending)
        with tracing_mode(self.model):
            for group in prunable_groups(self.model, self.graph, ignored_layers, prune_ignore):
                imp = self.importance(group)
                if imp is None:
                    continue
                imp = imp.detach().float().cpu()
                order = torch.argsort(imp)
                self.groups.append((names[group[0].dep.target.module], order.tolist(), group, imp[order].tolist()))
        self.fixed: dict[int, int] = {}  # group index -> channels removed, from layer_ratios
        for key, ratio in (prune_layers or {}).items():
            hits = [g for g, (name, *_) in enumerate(self.groups) if match_layer(name, key)]
            if not hits:
                raise PruneError(f"prune_layers: {key!r} matches no prunable layer; accepted: {self.layer_keys()}")
            for g in hits:
                self.fixed[g] = len(self.groups[g][1]) - kept_channels(len(self.groups[g][1]), ratio, self.round_to)
        # stock C2f / C2PSA need equal halves: each split block's two groups move together, also when ranked globally
        # (after self.fixed: a pair is left out by what prune_layers fixed)
        self.pairs = self._split_pairs(prune_layers or {})
        # measured after ranking, on the unpruned model: allocators evaluate candidates on it without re-tracing
        self.flops_cost = FlopsCost(self.model, self.graph, [group for _, _, group, _ in self.groups])

    def _split_pairs(self, layer_ratios: dict) -> list[tuple[int | None, int | None]]:
        """Per split block, the groups owning its ``cv0`` and ``cv1`` output channels (None: not prunable).

        Left out, so their halves may differ (the block then folds to a yolo-prune class): a block with a
        ``layer_ratios`` key inside it (e.g. ``model.2.cv0``) that fixes one of the two groups (the user asked for that
        half alone); a block with a fixed half whose partner cannot be pruned (``{10: 0.5}`` on C2PSA: the lock would
        drop the ratio asked for); a block whose halves already differ (a folded checkpoint, re-split: equal removals
        cannot make it Ultralytics' class again, and each half keeps its own rounding).
        """
        owner = self.owners()
        pairs = []
        for name, block in self.model.named_modules():
            if not isinstance(block, (C2fSplit, C2PSASplit)):
                continue
            pair = (owner.get(block.cv0.conv), owner.get(block.cv1.conv))
            inside = [k for k in layer_ratios if str(k).startswith(name + ".")]  # int keys name whole layers
            if any(g is not None and match_layer(self.groups[g][0], k) for k in inside for g in pair):
                continue
            if None in pair and any(g in self.fixed for g in pair):
                continue
            if None not in pair and len(self.groups[pair[0]][1]) != len(self.groups[pair[1]][1]):
                continue
            pairs.append(pair)
        return pairs

    def owners(self) -> dict[nn.Module, int]:
        """Module -> the index of the first group that prunes its output channels."""
        return owners(self.graph, [group for _, _, group, _ in self.groups])

    def lock(self, removed: list[int]) -> list[int]:
        """``removed`` with both halves of each paired split block at the same count: the smaller of the two, or none
        when one half cannot be pruned (e.g. the half feeding attention), so those blocks fold back to Ultralytics'
        classes (blocks :meth:`_split_pairs` leaves out may differ)."""
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
        """Channels to remove per group at one per-layer ``ratio`` (:func:`.allocate.removed_uniform`)."""
        return allocate.removed_uniform(self, ratio)

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

        See :func:`~yolo_prune.engine.allocate.removed_for_cost`, here on the FLOPs cost model.
        """
        return allocate.removed_for_cost(self, self.flops_cost, flops_fraction)

    def removed_global(self, ratio: float | None = None, flops_fraction: float | None = None) -> list[int]:
        """Channels to remove per group, ranked across all groups (``prune_global``), to ``ratio`` of all channels or
        the GFLOPs fraction ``flops_fraction`` (see :func:`~yolo_prune.engine.allocate.removed_global`)."""
        return allocate.removed_global(self, self.flops_cost, ratio, flops_fraction)


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
