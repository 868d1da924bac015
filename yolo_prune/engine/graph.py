"""Tracing and grouping: which models are supported, how they are prepared and traced into torch-pruning's graph.

This is the graph half of the engine (torch-pruning's ``DependencyGraph``): it knows nothing about importance, cost
or plans. :class:`~yolo_prune.engine.pruner.ChannelPruner` builds on it.
"""

from __future__ import annotations

from contextlib import contextmanager
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
from ultralytics.utils.torch_utils import unwrap_model

from .blocks import C2fFolded, C2fSplit, C2PSAFolded, C2PSASplit, split_model
from ..cfg import SUPPORTED_MODELS, PruneError
from ..support import has
from .importance import frozen_bn_stats

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
    # Ultralytics < 8.4.113 detaches YOLO26's one-to-one head inputs in eval() too, which hides that branch from the
    # trace: run it once more on the head's inputs, undetached (8.4.113+ traces it in the eval forward already)
    late = [] if has("yolo26 trace") else [m for m in model.modules() if getattr(m, "one2one_cv2", None) is not None]
    inputs: dict[nn.Module, list] = {}
    for head in late:
        hooks.append(head.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod, list(args[0]))))
    for head in (m for m in model.modules() if isinstance(m, Pose26)):
        for feat_attr, sigma_attr in (("cv4", "cv4_sigma"), ("one2one_cv4", "one2one_cv4_sigma")):
            for branch, sigma in zip(getattr(head, feat_attr, None) or [], getattr(head, sigma_attr, None) or []):
                hooks.append(branch.register_forward_hook(lambda mod, i, o: feats.__setitem__(mod, o)))
                sigma_pairs.append((branch, sigma))
    try:
        with frozen_bn_stats(nn.ModuleList(train_only)):
            out = _raw_outputs(model(x))
        out += [sigma(feats[branch]) for branch, sigma in sigma_pairs if branch in feats]
        one2one = [_side_effect_free(head, inputs[head]) for head in late if head in inputs]
        return out + [t for preds in one2one for t in _raw_outputs(preds)]
    finally:
        for h in hooks:
            h.remove()
        for m in train_only:
            m.eval()
        _detach_cached(model)


def _detach_cached(model: nn.Module) -> None:
    """Detach tensors a forward cached on its modules (OBB's ``_inference`` keeps ``self.angle`` in some Ultralytics
    releases): a traced one would make the model impossible to deep-copy (EMA, checks, checkpoints)."""
    for m in model.modules():
        for k, v in list(vars(m).items()):
            if isinstance(v, torch.Tensor) and v.grad_fn is not None:
                setattr(m, k, v.detach())


def _side_effect_free(head: nn.Module, x: list):
    """``head``'s one-to-one branch on ``x``, with any attribute the forward caches (OBB's angles) put back after."""
    saved = dict(head.__dict__)
    try:
        return head.forward_head(x, **head.one2one)
    finally:
        head.__dict__.clear()
        head.__dict__.update(saved)


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


def prunable_groups(model: nn.Module, graph: tp.DependencyGraph, ignored_layers=(), prune_ignore=()) -> list:
    """The coupled channel groups of ``graph`` the engine may prune, one per root conv/linear: all but those of the
    output layers, of ``ignored_layers``, of the layers ``prune_ignore`` names, and of attention (its heads)."""
    ignored = output_layers(model) + list(ignored_layers) + ignored_modules(model, prune_ignore)
    ignored += [m for m in model.modules() if isinstance(m, Attention)]
    with tracing_mode(model):
        return list(graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)))


def owners(graph: tp.DependencyGraph, groups: list) -> dict[nn.Module, int]:
    """Module -> the index of the first of ``groups`` that prunes its output channels."""
    owner: dict[nn.Module, int] = {}
    for g, group in enumerate(groups):
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                owner.setdefault(dep.target.module, g)
    return owner


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
