"""Sparsity training before a step: an L1 penalty on BatchNorm scales (``prune_sparsity``) and DepGraph's group
regularization (``prune_reg``), both applied right after each optimizer step.

Network slimming adds ``lambda * sum(|gamma|)`` to the loss so that unimportant channels shrink before they are cut.
Ultralytics has no hook between ``backward`` and ``optimizer.step``, so the penalty is applied as its proximal operator
right after each optimizer step (``torch.optim.Optimizer.register_step_post_hook``): every penalised scale moves
``lr * lambda`` towards zero and stops there (soft-thresholding), which also leaves exact zeros that the ``bn``
criterion removes first.

``prune_reg`` is torch-pruning's ``GroupNormPruner.regularize`` (DepGraph, CVPR 2023): every channel of a coupled group
(its rows in the convs that make it, its BatchNorm scale, its columns in the convs that read it) decays with a strength
``reg * gamma``, where ``gamma = 16**((I_max - I) / (I_max - I_min))`` is 1 for the group's strongest channel by L2
norm ``I`` and 16 for its weakest (torch-pruning's ``alpha=2**4``). torch-pruning adds ``reg * gamma * w`` to the
gradients between ``backward`` and ``optimizer.step``; here it is the decoupled form, ``w *= 1 - lr * reg * gamma``
after the step, for the reason above and because AdamW (what Ultralytics' ``optimizer=auto`` picks for runs up to 10k
iterations) would rescale a gradient term away; so ``reg`` here is per unit of LR, not torch-pruning's scale. Unlike
torch-pruning, depthwise convs' rows decay with their group (they are cut with it); ConvTranspose2d layers are left
alone. The groups are traced on a split copy of the live model (the live one holds Ultralytics' fused ``cv1``) and
mapped back to the live tensors.
"""

from __future__ import annotations

import re
from copy import deepcopy

import torch
import torch.nn as nn
from ultralytics.nn.modules.block import Attention
from ultralytics.utils.torch_utils import unwrap_model

from .blocks import C2fSplit, C2PSASplit
from .graph import build_graph, owners, prepare_model, prunable_groups

ALPHA = 16.0  # torch-pruning's alpha: the weakest channel of a group decays this many times faster than its strongest


def penalised_norms(model: nn.Module, exclude=()) -> list[nn.BatchNorm2d]:
    """BatchNorm layers whose channels the engine can remove: all but those in Attention and in ``exclude``."""
    model = unwrap_model(model)
    skip = {id(m) for a in model.modules() if isinstance(a, Attention) for m in a.modules()}
    skip |= {id(m) for m in exclude}
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and id(m) not in skip]


@torch.no_grad()
def soft_threshold(norms: list[nn.BatchNorm2d], amount: float) -> None:
    """gamma <- sign(gamma) * max(|gamma| - amount, 0) for every layer in ``norms``."""
    for m in norms:
        w = m.weight
        w.copy_(w.sign() * (w.abs() - amount).clamp_(min=0))


class BNSparsity:
    """Proximal L1 on BatchNorm scales after every step of one optimizer, at that step's learning rate."""

    def __init__(self, norms: list[nn.BatchNorm2d], lam: float):
        self.norms, self.lam = norms, float(lam)
        self.optimizer = None
        self._handle = None

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply after each ``optimizer.step()`` (re-attach after the optimizer is rebuilt)."""
        self.detach()
        self.optimizer = optimizer
        self._handle = optimizer.register_step_post_hook(self._after_step)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = self.optimizer = None

    def _after_step(self, optimizer, args, kwargs) -> None:
        owner = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        with torch.no_grad():
            for m in self.norms:
                g = owner.get(id(m.weight))
                if g is not None and m.weight.requires_grad:  # a frozen layer's (freeze=) stays as it is
                    soft_threshold([m], g["lr"] * self.lam)


class _Slice:
    """The part of one live tensor that belongs to some channels of a group, along ``dim`` (0: rows, 1: columns).

    ``rows`` narrows dim 0 first (a column slice of one half of a fused ``cv1``); ``root`` is each channel's position
    in the group's root layer.
    """

    def __init__(self, param: nn.Parameter, dim: int, idx: list[int], root: list[int], rows: slice = slice(None)):
        self.param, self.dim, self.rows = param, dim, rows
        self.idx, self.root = torch.tensor(idx, device=param.device), torch.tensor(root, device=param.device)

    def view(self) -> torch.Tensor:
        return self.param.data[self.rows]

    def squares(self) -> torch.Tensor:
        """Sum of squares of each channel's weights."""
        w = self.view().index_select(self.dim, self.idx).transpose(0, self.dim)
        return w.reshape(len(self.idx), -1).pow(2).sum(1)

    def scale(self, factor: torch.Tensor) -> None:
        """Multiply each channel's weights by its ``factor`` (in root positions)."""
        w, f = self.view(), factor[self.root]
        shape = [1] * w.dim()
        shape[self.dim] = -1
        w.index_copy_(self.dim, self.idx, w.index_select(self.dim, self.idx) * f.view(shape))


def _live_target(copy_modules: dict, live_modules: dict, name: str) -> tuple[nn.Module, int]:
    """The live module a module of the split copy stands for, and the row offset of its channels there."""
    m = re.fullmatch(r"(.+)\.(cv0|cv1)\.(conv|bn)", name)
    block = copy_modules.get(m.group(1)) if m else None
    if not isinstance(block, (C2fSplit, C2PSASplit)) or isinstance(live_modules[m.group(1)], (C2fSplit, C2PSASplit)):
        return live_modules[name], 0  # not a split block, or one the live model holds split too
    return live_modules[f"{m.group(1)}.cv1.{m.group(3)}"], 0 if m.group(2) == "cv0" else block.cv0.conv.out_channels


def _never_pruned(model: nn.Module, graph, groups: list) -> set[int]:
    """Groups the pruner always leaves whole: a split block's half whose other half cannot be pruned (the half
    feeding attention) keeps its width, so both halves stay equal (:meth:`.pruner.ChannelPruner.lock`)."""
    owner = owners(graph, groups)
    out = set()
    for block in model.modules():
        if isinstance(block, (C2fSplit, C2PSASplit)):
            pair = [owner.get(block.cv0.conv), owner.get(block.cv1.conv)]
            if None in pair:
                out |= {g for g in pair if g is not None}
    return out


def group_slices(model: nn.Module, prune_ignore=()) -> list[tuple[nn.Parameter, int, list[_Slice]]]:
    """Per group of ``model`` (a live Ultralytics model) the pruner may cut: its root weight, channel count and the
    slices of its tensors that train (a frozen layer's stay as they are).

    ``prune_ignore``: layer keys whose groups are left alone, resolved on the split copy (both halves of a block).
    """
    model = unwrap_model(model)
    live = dict(model.named_modules())
    copy = prepare_model(deepcopy(model))
    copies = dict(copy.named_modules())
    graph = build_graph(copy)
    groups = prunable_groups(copy, graph, (), prune_ignore or ())
    skip = _never_pruned(copy, graph, groups)
    out = []
    for group in (group for g, group in enumerate(groups) if g not in skip):
        slices = []
        for item in group:
            dep, idxs, root = item.dep, list(item.idxs), list(item.root_idxs)
            layer, name = dep.target.module, graph._module2name.get(dep.target.module)
            if name is None:  # an op node (concat, split, activation) has no weights
                continue
            target, off = _live_target(copies, live, name)
            if not target.weight.requires_grad:  # frozen (freeze=): torch-pruning skips what has no gradient too
                continue
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine:
                slices.append(_Slice(target.weight, 0, [i + off for i in idxs], root))
            elif isinstance(layer, (nn.Conv2d, nn.Linear)) and graph.is_out_channel_pruning_fn(dep.handler):
                slices.append(_Slice(target.weight, 0, [i + off for i in idxs], root))
            elif isinstance(layer, (nn.Conv2d, nn.Linear)) and getattr(layer, "groups", 1) == 1:
                n = layer.weight.shape[0]  # in-channels: this half's rows of the live conv
                slices.append(_Slice(target.weight, 1, idxs, root, slice(off, off + n)))
        if slices:
            out.append((slices[0].param, len(group[0].idxs), slices))
    return out


class GroupDecay:
    """``prune_reg``: DepGraph's group regularization after every step of one optimizer, at that step's learning rate.

    Args:
        groups: :func:`group_slices` of the live model.
        reg: Decay per unit of learning rate for a group's strongest channel (its weakest: ``ALPHA`` times more).
    """

    def __init__(self, groups: list, reg: float):
        self.groups, self.reg = groups, float(reg)
        self.optimizer = None
        self._handle = None

    attach, detach = BNSparsity.attach, BNSparsity.detach

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs) -> None:
        lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        for root, n, slices in self.groups:
            lr = lrs.get(id(root))
            if lr is None:  # not this optimizer's parameter
                continue
            sq = torch.zeros(n, device=root.device)
            for s in slices:
                sq.index_add_(0, s.root, s.squares().to(sq.dtype))
            norm = sq.sqrt()
            span = norm.max() - norm.min()
            if not span > 0:
                continue
            gamma = ALPHA ** ((norm.max() - norm) / span)
            factor = (1 - lr * self.reg * gamma).clamp_(min=0)
            for s in slices:
                s.scale(factor.to(s.param.dtype))
