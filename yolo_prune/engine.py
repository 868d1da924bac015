"""Channel pruning engine: torch-pruning's DependencyGraph on Ultralytics YOLO detection models.

Pruning is split in two so the trainer can decide once and apply everywhere:

* :class:`ChannelPruner` traces one model, ranks the channels of every coupled group with an importance criterion and
  returns a :class:`PrunePlan` (root layer name -> channel indices to remove), for a per-layer ratio or a GFLOPs target.
* :func:`apply_plan` removes those channels from any structurally identical model: the live model, its EMA copy, or
  the model on another DDP rank. The plan is plain data, so it can be broadcast.
"""

from __future__ import annotations

import copy
import heapq
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
import torch_pruning as tp
from ultralytics.nn.modules.block import (
    C2PSA,
    C3,
    DFL,
    SPPF,
    Attention,
    Bottleneck,
    C2f,
    C3k2,
    Proto,
    Proto26,
    PSABlock,
    RealNVP,
)
from ultralytics.nn.modules.conv import Concat, Conv, DWConv
from ultralytics.nn.modules.head import OBB, OBB26, Classify, Detect, Pose, Pose26, Segment, Segment26
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, OBBModel, PoseModel, SegmentationModel
from ultralytics.utils.torch_utils import get_flops, unwrap_model

from .blocks import C2fFolded, C2fSplit, C2PSAFolded, C2PSASplit, fold_model, split_model
from .cfg import PRUNE_DEFAULTS, PruneError
from .importance import GRADIENT_METHODS, accumulate_gradients, frozen_bn_stats, get_importance

# Ultralytics blocks the engine is verified on (YOLOv8 / YOLO11 / YOLO26 detection). Anything else from
# ultralytics.nn is refused up front: torch-pruning would trace it, but chunk/split/view inside an unknown block can
# mis-map channels silently.
SUPPORTED_BLOCKS = (
    Conv,
    DWConv,
    C2f,
    C3k2,
    C3,
    Bottleneck,
    SPPF,
    C2PSA,
    PSABlock,
    Attention,
    Concat,
    Detect,
    DFL,
    C2fSplit,
    C2PSASplit,
    C2fFolded,
    C2PSAFolded,
    Segment,
    Segment26,
    Proto,
    Proto26,
    Pose,
    Pose26,
    RealNVP,
    OBB,
    OBB26,
    Classify,
)
# model class -> its head classes (exact types: a subclass may add outputs the engine does not know to keep)
SUPPORTED_HEADS = {
    DetectionModel: (Detect,),
    SegmentationModel: (Segment, Segment26),
    PoseModel: (Pose, Pose26),
    OBBModel: (OBB, OBB26),
    ClassificationModel: (Classify,),
}
SUPPORTED_MODELS = "YOLOv8 / YOLO11 / YOLO26 detect, segment, pose, obb and classify models"
TRACE_IMGSZ = 64  # the dependency graph does not depend on spatial size; a small trace keeps time and RSS low


class _AttentionPruner(tp.pruner.function.BasePruningFunc):
    """Treat ``Attention`` as one opaque layer so the tracer never walks its view/split/matmul.

    Tracing inside Attention is what blew up RSS (see the traps notes). Its channels are kept intact: the engine lists
    every Attention as ignored, so no group that would change its width is ever pruned, and these methods only serve
    the graph builder.
    """

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        raise RuntimeError("yolo-prune keeps Attention layers intact; this group should have been ignored")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.proj.conv.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.qkv.conv.in_channels


CUSTOMIZED_PRUNERS = {Attention: _AttentionPruner()}


@dataclass
class PrunePlan:
    """Channels to remove, as plain data: ``groups`` is a list of (root layer name, channel indices)."""

    groups: list[tuple[str, list[int]]] = field(default_factory=list)
    ratio: float = 0.0  # per-layer channel ratio the plan was made with
    est_flops_fraction: float = 1.0  # estimated GFLOPs after / before (conv and linear layers)

    @property
    def n_channels(self) -> int:
        """Total number of root channels removed."""
        return sum(len(i) for _, i in self.groups)


def check_supported(model: nn.Module) -> None:
    """Raise PruneError naming the first thing about ``model`` that the engine does not support."""
    model = unwrap_model(model)
    heads = SUPPORTED_HEADS.get(type(model), ())
    if type(model.model[-1]) not in heads:
        what = f"{type(model).__name__} with a {type(model.model[-1]).__name__} head"
        raise PruneError(f"model: {what} is not supported; supported: {SUPPORTED_MODELS}")
    for m in model.modules():
        if type(m).__module__.startswith("ultralytics.nn.modules") and not isinstance(m, SUPPORTED_BLOCKS):
            raise PruneError(f"model: block {type(m).__name__} is not supported; supported: {SUPPORTED_MODELS}")


def prepare_model(model: nn.Module) -> nn.Module:
    """Swap C2f/C3k2/C2PSA (stock or folded) for their two-conv equivalents in place (idempotent; outputs unchanged)."""
    model = unwrap_model(model)
    split_model(model)
    return model


def output_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels define the model's outputs and must keep their width.

    Boxes and classes (``cv2``/``cv3``), mask coefficients, keypoints and angles (``cv4``), YOLO26's one-to-one copies,
    Pose26's keypoint and sigma convs, the prototype count (``proto.cv3``), Proto26's semantic logits, and the class
    logits of ``Classify``; hidden widths (head branches, ``Proto`` hidden convs, ``Classify.conv``) can go.
    """
    head = unwrap_model(model).model[-1]
    if isinstance(head, Classify):
        return [head.linear]
    keep: list[nn.Module] = [head.dfl]
    for attr in ("cv2", "cv3", "cv4", "one2one_cv2", "one2one_cv3", "one2one_cv4"):
        for branch in getattr(head, attr, None) or []:
            last = branch[-1] if isinstance(branch, nn.Sequential) else branch
            if isinstance(last, nn.Conv2d):  # Pose26's cv4 ends in a hidden Conv block: its outputs are below
                keep.append(last)
    for attr in ("cv4_kpts", "cv4_sigma", "one2one_cv4_kpts", "one2one_cv4_sigma"):
        keep += list(getattr(head, attr, None) or [])
    proto = getattr(head, "proto", None)
    if proto is not None:
        keep.append(proto.cv3.conv)
        if getattr(proto, "semseg", None) is not None:
            keep.append(proto.semseg[-1])
    return keep


def _raw_outputs(out) -> list[torch.Tensor]:
    """Tensors of the raw head outputs, skipping decoded/top-k post-processing and the echoed input features."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], dict):
        out = out[1]  # eval mode: (decoded, raw preds); trace the raw preds only
    found: list[torch.Tensor] = []

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            found.append(x)
        elif isinstance(x, dict):
            for k, v in x.items():
                if k != "feats":
                    walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(out)
    return found


@contextmanager
def tracing_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode with every parameter requiring grad, restoring both afterwards.

    torch-pruning traces through autograd and skips frozen parameters (Ultralytics always freezes ``.dfl``), and YOLO26
    detaches the one-to-one head inputs in train mode, so tracing needs eval() and grads on.
    """
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)


def _trace_forward(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The traced forward: eval(), except that train-only branches run too.

    Proto26's semantic branch runs only in train(); an eval trace would not see it, its input channels would stay and
    the next training forward would crash. It runs in train mode here (BatchNorm statistics frozen) while the head
    around it stays in eval(). This is switched inside the forward because torch-pruning calls ``model.eval()`` first.
    """
    train_only = [m for m in model.modules() if isinstance(m, Proto26) and getattr(m, "semseg", None) is not None]
    for m in train_only:
        m.train()
    # Pose26's keypoint sigmas are computed in training only, from the cv4 features: capture those features in the
    # eval forward and apply the sigma convs to them once, so their input channels follow cv4's
    sigma_pairs, feats, hooks = [], {}, []
    for head in (m for m in model.modules() if isinstance(m, Pose26)):
        for feat_attr, sigma_attr in (("cv4", "cv4_sigma"), ("one2one_cv4", "one2one_cv4_sigma")):
            for branch, sigma in zip(getattr(head, feat_attr, None) or [], getattr(head, sigma_attr, None) or []):
                hooks.append(branch.register_forward_hook(lambda mod, i, o: feats.__setitem__(mod, o)))
                sigma_pairs.append((branch, sigma))
    try:
        with frozen_bn_stats(nn.ModuleList(train_only)):
            out = _raw_outputs(model(x))
        return out + [sigma(feats[branch]) for branch, sigma in sigma_pairs if branch in feats]
    finally:
        for h in hooks:
            h.remove()
        for m in train_only:
            m.eval()


def build_graph(model: nn.Module, imgsz: int = TRACE_IMGSZ) -> tp.DependencyGraph:
    """Trace ``model`` (already prepared) into a torch-pruning DependencyGraph."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
    with tracing_mode(model):
        return tp.DependencyGraph().build_dependency(
            model,
            x,
            forward_fn=_trace_forward,
            customized_pruners=CUSTOMIZED_PRUNERS,
            verbose=False,
        )


def kept_channels(channels: int, ratio: float, round_to: int) -> int:
    """Channels a layer keeps at per-layer ratio ``ratio``: a multiple of ``round_to``, at least ``round_to``."""
    if channels <= round_to:
        return channels
    keep = round(channels * (1.0 - ratio) / round_to) * round_to
    return int(min(channels, max(round_to, keep)))


def match_layer(name: str, key: int | str) -> bool:
    """Whether module ``name`` is layer ``key`` or inside it: an Ultralytics layer index (``22`` is ``model.22``) or a
    module name (``model.22.cv2``)."""
    prefix = f"model.{key}" if isinstance(key, int) else str(key)
    return name == prefix or name.startswith(prefix + ".")


def ignored_modules(model: nn.Module, keys) -> list[nn.Module]:
    """Conv/linear/norm layers inside the layers named by ``prune_ignore`` keys; PruneError for a key matching none."""
    named = list(unwrap_model(model).named_modules())
    found: list[nn.Module] = []
    for key in keys:
        hits = [m for n, m in named if match_layer(n, key)]
        if not hits:
            last = len(unwrap_model(model).model) - 1
            raise PruneError(
                f"prune_ignore: {key!r} matches no layer; accepted: layer indices 0-{last} or module names like "
                f"model.{last}.cv2"
            )
        found += [m for m in hits if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))]
    return found


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
        self._flops_model = self._conv_costs()

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

    def _conv_costs(self) -> dict:
        """Per-layer FLOPs terms and, per group, which layers lose input/output channels with it."""
        hw: dict[nn.Module, int] = {}
        hooks = [
            m.register_forward_hook(lambda m, i, o: hw.__setitem__(m, o.shape[-1] * o.shape[-2] if o.ndim == 4 else 1))
            for m in self.model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        p = next(self.model.parameters())
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            self.model(torch.zeros(1, 3, TRACE_IMGSZ, TRACE_IMGSZ, device=p.device, dtype=p.dtype))
        self.model.train(was_training)
        for h in hooks:
            h.remove()
        touched = []  # per group: [(layer, "out"|"in")]
        for _, _, group, _ in self.groups:
            layers = []
            for dep, _ in group:
                m = dep.target.module
                if m in hw:
                    layers.append((m, "out" if self.graph.is_out_channel_pruning_fn(dep.handler) else "in"))
            touched.append(layers)
        return {"hw": hw, "touched": touched}

    def estimate_flops(self, removed: list[int]) -> float:
        """Conv + linear FLOPs (arbitrary units) if group ``g`` loses ``removed[g]`` channels."""
        d_out: dict[nn.Module, int] = {}
        d_in: dict[nn.Module, int] = {}
        for n, layers in zip(removed, self._flops_model["touched"]):
            for m, kind in layers:
                d = d_out if kind == "out" else d_in
                d[m] = d.get(m, 0) + n
        total = 0.0
        for m, hw in self._flops_model["hw"].items():
            if isinstance(m, nn.Linear):
                total += (m.in_features - d_in.get(m, 0)) * (m.out_features - d_out.get(m, 0))
                continue
            k = m.kernel_size[0] * m.kernel_size[1]
            if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise: in and out move together
                total += k * (m.out_channels - max(d_out.get(m, 0), d_in.get(m, 0))) * hw
            else:
                cin = (m.in_channels - d_in.get(m, 0)) / m.groups
                total += k * cin * (m.out_channels - d_out.get(m, 0)) * hw
        return total

    def _removed(self, ratio: float) -> list[int]:
        return self.lock(
            [
                self.fixed.get(g, len(order) - kept_channels(len(order), ratio, self.round_to))
                for g, (_, order, *_) in enumerate(self.groups)
            ]
        )

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

        torch-pruning only takes channel ratios, and GFLOPs fall roughly with the square of the kept width. A uniform
        ratio is searched first on the analytic estimate (no copy, no re-trace); with ``round_to`` it moves in coarse
        steps on small models, so the remaining gap is closed one rounding unit at a time, always in the group that is
        currently pruned least, which keeps the allocation as close to uniform as the rounding allows. Groups with a
        fixed ratio (``layer_ratios``) keep it; the two halves of a split block move together, one unit each.
        """
        base = self.estimate_flops([0] * len(self.groups))
        frac = lambda removed: self.estimate_flops(removed) / base  # noqa: E731
        lo, hi = 0.0, 0.99
        for _ in range(30):  # the fraction is a non-increasing step function of the ratio
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if frac(self._removed(mid)) > flops_fraction else (lo, mid)
        removed = self._removed(lo)
        sizes = [len(order) for _, order, *_ in self.groups]
        current = frac(removed)
        paired = {g for pair in self.pairs for g in pair}
        units = [(g,) for g in range(len(sizes)) if g not in self.fixed and g not in paired]
        units += [p for p in self.pairs if None not in p and not any(g in self.fixed for g in p)]
        while current > flops_fraction:
            room = [u for u in units if all(sizes[g] - removed[g] - self.round_to >= self.round_to for g in u)]
            if not room:
                break
            unit = min(room, key=lambda u: (removed[u[0]] / sizes[u[0]], -sizes[u[0]]))
            trial = removed.copy()
            for g in unit:
                trial[g] += self.round_to
            new = frac(trial)
            if new <= flops_fraction and flops_fraction - new > current - flops_fraction:
                break  # one more unit overshoots by more than it closes
            removed, current = trial, new
        return removed

    def removed_global(self, ratio: float | None = None, flops_fraction: float | None = None) -> list[int]:
        """Channels to remove per group, ranked across all groups (``prune_global``).

        Channels go in rounding units, least important unit first over the whole model (a heap of each group's next
        unit, scored by its mean importance), until ``ratio`` of all channels or the GFLOPs fraction is reached. No
        group loses more than ``max_ratio`` of its channels or keeps fewer than ``round_to``. torch-pruning's
        ``global_pruning`` works on ratios only and has no rounding to multiples, hence this loop.
        """
        sizes = [len(order) for _, order, *_ in self.groups]
        removed = [self.fixed.get(g, 0) for g in range(len(sizes))]
        r = self.round_to

        def next_level(g: int) -> int | None:
            """Removed count after group g's next unit, keeping the kept count a multiple of round_to."""
            size, n = sizes[g], removed[g]
            kept = (size - n - 1) // r * r if (size - n) % r == 0 else (size - n) // r * r
            keep_min = max(r, math.ceil((1 - self.max_ratio) * size / r) * r)
            return size - kept if size > r and kept >= keep_min else None

        heap = []
        for g in range(len(sizes)):
            if g not in self.fixed and (lvl := next_level(g)) is not None:
                heapq.heappush(heap, (sum(self.groups[g][3][removed[g] : lvl]) / (lvl - removed[g]), g, lvl))
        base = self.estimate_flops([0] * len(sizes))
        target_channels = ratio * sum(sizes) if ratio is not None else None
        while heap:
            if target_channels is not None and sum(removed) >= target_channels:
                break
            if flops_fraction is not None and self.estimate_flops(removed) / base <= flops_fraction:
                break
            _, g, lvl = heapq.heappop(heap)
            removed[g] = lvl
            if (lvl := next_level(g)) is not None:
                heapq.heappush(heap, (sum(self.groups[g][3][removed[g] : lvl]) / (lvl - removed[g]), g, lvl))
        return removed

    def apply(self, plan: PrunePlan) -> None:
        """Apply ``plan`` to this pruner's own model and fold it (see :func:`apply_plan`; the graph is stale after)."""
        _apply(self.model, self.graph, plan)
        fold_model(self.model)


def _apply(model: nn.Module, graph: tp.DependencyGraph, plan: PrunePlan) -> None:
    modules = dict(model.named_modules())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        for name, idxs in plan.groups:
            layer = modules[name]
            handler = graph.get_pruner_of_module(layer).prune_out_channels
            graph.get_pruning_group(layer, handler, idxs).prune()
    for n, p in model.named_parameters():  # pruned tensors are new Parameters with requires_grad=True
        p.requires_grad_(n not in frozen)


def apply_plan(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Remove the channels in ``plan`` from ``model`` in place (any model structurally identical to the planned one).

    The model is split for the prune and folded afterwards, so the live model, its EMA and every checkpoint hold one
    ``cv1`` conv per block (Ultralytics' own classes where the halves kept equal widths).
    """
    model = prepare_model(unwrap_model(model))
    _apply(model, build_graph(model), plan)
    fold_model(model)
    return model


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
        from .sensitivity import removed_for_target  # the sensitivity table allocates the per-layer ratios

        if prune is None:
            raise PruneError("prune_method=sensitivity plans for a GFLOPs target; accepted: prune=<0-1>")
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
        options: ``ignore``, ``layer_ratios``, ``global_rank``, ``max_ratio``, ``sensitivity`` (see ChannelPruner).
    """
    if prune is not None and ratio is not None:
        raise PruneError("prune: give one of prune=<GFLOPs fraction> or prune_ratio=<channel ratio>, not both")
    if prune is None and ratio is None and not options.get("layer_ratios"):
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
        plan = plan_for_target(model, prune, ratio, method, round_to, imgsz, ignored_layers, **options)
    finally:
        model.zero_grad(set_to_none=True)
    apply_plan(model, plan)
    check_forward(model)
    return plan
