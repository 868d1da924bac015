"""Pruning-friendly forms of the Ultralytics blocks whose forward splits one conv's output in two.

torch-pruning cannot map channel indices through ``chunk``/``split`` of a single conv (IndexError on stock C2f/C3k2,
and the stock forward needs two equal halves). While pruning, :class:`C2fSplit` / :class:`C2PSASplit` hold the two
halves as two convs, so every channel has one owner. After pruning, :func:`fold_model` concatenates the two convs back
into one ``cv1``: with equal halves the block becomes the original Ultralytics class again (so checkpoints load with
plain ``ultralytics``, also under ``ULTRALYTICS_SAFE_LOAD=1``), with unequal halves a :class:`C2fFolded` /
:class:`C2PSAFolded` that splits at ``(c0, c1)``. Either way the block runs one conv where the original ran one. All are
real classes in an importable module so that ``deepcopy`` (ModelEMA), ``torch.save`` and Ultralytics' loader work.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn as nn
from ultralytics.nn.modules.block import C2PSA, C2f
from ultralytics.nn.modules.conv import Conv


def _split_conv(conv: Conv, start: int, end: int) -> Conv:
    """Return a copy of an Ultralytics ``Conv`` (conv + BN + act) keeping output channels ``start:end``."""
    new = copy.deepcopy(conv)
    c = new.conv
    c.weight = nn.Parameter(c.weight.data[start:end].clone(), requires_grad=c.weight.requires_grad)
    if c.bias is not None:
        c.bias = nn.Parameter(c.bias.data[start:end].clone(), requires_grad=c.bias.requires_grad)
    c.out_channels = end - start
    if hasattr(new, "bn"):
        bn = new.bn
        for name in ("weight", "bias"):
            p = getattr(bn, name)
            setattr(bn, name, nn.Parameter(p.data[start:end].clone(), requires_grad=p.requires_grad))
        bn.running_mean = bn.running_mean[start:end].clone()
        bn.running_var = bn.running_var[start:end].clone()
        bn.num_features = end - start
    return new


# Ultralytics' graph bookkeeping set by parse_model, kept on every form of a block
GRAPH_ATTRS = ("i", "f", "type", "np")


def _cat_convs(a: Conv, b: Conv) -> Conv:
    """One ``Conv`` whose output channels are ``a``'s then ``b``'s (conv weight, bias, BN affine and statistics)."""
    new = copy.deepcopy(a)
    c = new.conv

    def cat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat((x.detach(), y.detach()), 0).clone()

    def param(x: nn.Parameter, y: nn.Parameter) -> nn.Parameter:
        # one tensor, one flag: if either half trains, the folded conv trains
        return nn.Parameter(cat(x, y), requires_grad=x.requires_grad or y.requires_grad)

    c.weight = param(a.conv.weight, b.conv.weight)
    if c.bias is not None:
        c.bias = param(a.conv.bias, b.conv.bias)
    c.out_channels = a.conv.out_channels + b.conv.out_channels
    if hasattr(new, "bn"):
        bn = new.bn
        for name in ("weight", "bias"):
            if getattr(bn, name, None) is not None:
                setattr(bn, name, param(getattr(a.bn, name), getattr(b.bn, name)))
        if bn.running_mean is not None:
            bn.running_mean = cat(a.bn.running_mean, b.bn.running_mean)
            bn.running_var = cat(a.bn.running_var, b.bn.running_var)
        bn.num_features = c.out_channels
    return new


def _copy_graph_attrs(src: nn.Module, dst: nn.Module) -> None:
    for attr in GRAPH_ATTRS:
        if hasattr(src, attr):
            setattr(dst, attr, getattr(src, attr))
    dst.train(src.training)


class _SplitCv1(nn.Module):
    """Shared construction: the block's ``cv1`` (c1 -> c0 + c1) becomes ``cv0`` (first c0) and ``cv1`` (next c1).

    ``base`` remembers the Ultralytics class the block came from (C2f, C3k2, C2PSA), so that folding with equal halves
    gives that class back.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        c0, c1 = split_sizes(block)
        self.c = c0  # the original half width (equal halves); kept for code that reads ``.c``
        self.base = getattr(block, "base", type(block))
        self.cv0 = _split_conv(block.cv1, 0, c0)
        self.cv1 = _split_conv(block.cv1, c0, c0 + c1)
        self.cv2 = block.cv2
        self.m = block.m
        _copy_graph_attrs(block, self)


class C2fSplit(_SplitCv1):
    """C2f / C3k2 with ``cv1`` held as two convs (``cv0`` -> first half, ``cv1`` -> second half).

    Output is identical to the stock block. Not a ``C2f`` subclass, so the exporter does not swap in
    ``forward_split``; ``forward_split`` is still defined because some code paths call it by name.
    """

    def __init__(self, block: nn.Module):
        """Build from a stock C2f-family block (or a :class:`C2fFolded`), copying weights and BN statistics."""
        super().__init__(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same computation as ``C2f.forward``."""
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    forward_split = forward


class C2PSASplit(_SplitCv1):
    """C2PSA with ``cv1`` held as two convs: ``cv0`` feeds the bypass, ``cv1`` the PSA blocks."""

    def __init__(self, block: nn.Module):
        """Build from a stock C2PSA (or a :class:`C2PSAFolded`), copying weights and BN statistics."""
        super().__init__(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same computation as ``C2PSA.forward``."""
        return self.cv2(torch.cat((self.cv0(x), self.m(self.cv1(x))), 1))


class _Folded(nn.Module):
    """Shared construction: one ``cv1`` conv whose output splits at ``(c0, c1)``, the halves pruned to unequal widths.

    Not a subclass of the Ultralytics class: the exporter would patch a ``C2f`` subclass's forward, and stock forwards
    assume equal halves. Loading a checkpoint with these blocks needs yolo-prune installed.
    """

    def __init__(self, block: _SplitCv1):
        super().__init__()
        self.c0, self.c1 = block.cv0.conv.out_channels, block.cv1.conv.out_channels
        self.base = block.base
        self.cv1 = _cat_convs(block.cv0, block.cv1)
        self.cv2 = block.cv2
        self.m = block.m
        _copy_graph_attrs(block, self)


class C2fFolded(_Folded):
    """C2f / C3k2 with halves of different widths: ``cv1`` output split at ``(c0, c1)``, the second half feeds ``m``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``C2f.forward_split`` with unequal halves."""
        y = list(self.cv1(x).split((self.c0, self.c1), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    forward_split = forward  # the name the exporter and some Ultralytics paths call


class C2PSAFolded(_Folded):
    """C2PSA with halves of different widths: ``cv1`` output split at ``(c0, c1)``, the second half feeds the PSA."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``C2PSA.forward`` with unequal halves."""
        a, b = self.cv1(x).split((self.c0, self.c1), 1)
        return self.cv2(torch.cat((a, self.m(b)), 1))

    forward_split = forward


SPLIT_OF = {C2fFolded: C2fSplit, C2PSAFolded: C2PSASplit}
FOLDED_OF = {C2fSplit: C2fFolded, C2PSASplit: C2PSAFolded}


def split_sizes(block: nn.Module) -> tuple[int, int]:
    """Widths of the two halves of a block's ``cv1`` output (stock: ``(c, c)``)."""
    if isinstance(block, _Folded):
        return block.c0, block.c1
    if isinstance(block, _SplitCv1):
        return block.cv0.conv.out_channels, block.cv1.conv.out_channels
    return block.c, block.c


def split_block(block: nn.Module) -> _SplitCv1:
    """The two-conv form of a stock C2f-family / C2PSA block or a folded one (outputs unchanged)."""
    if isinstance(block, _Folded):
        return SPLIT_OF[type(block)](block)
    return (C2PSASplit if isinstance(block, C2PSA) else C2fSplit)(block)


def fold_block(block: _SplitCv1) -> nn.Module:
    """One-conv form of a split block: the original Ultralytics class when both halves have the same width, else a
    :class:`C2fFolded` / :class:`C2PSAFolded`. Outputs are unchanged."""
    c0, c1 = block.cv0.conv.out_channels, block.cv1.conv.out_channels
    if c0 != c1:
        return FOLDED_OF[type(block)](block)
    cls = block.base
    new = cls.__new__(cls)  # no __init__: it would build (and randomly initialise) full-width layers
    nn.Module.__init__(new)
    new.c = c0  # stock forward_split / C2PSA.forward split at (c, c)
    new.cv1 = _cat_convs(block.cv0, block.cv1)
    new.cv2 = block.cv2
    new.m = block.m
    _copy_graph_attrs(block, new)
    return new


def _swap(parent: nn.Module, want, make) -> Iterator[str]:
    """Replace every child matching ``want`` by ``make(child)``, recursively; yields the replaced names."""
    for name, child in list(parent.named_children()):
        if want(child):
            setattr(parent, name, make(child))
            yield name
        else:
            yield from (f"{name}.{n}" for n in _swap(child, want, make))


def split_model(model: nn.Module) -> list[str]:
    """Swap every C2f-family / C2PSA block (stock or folded) for its two-conv form, in place; returns their names."""
    return list(_swap(model, lambda m: isinstance(m, (C2f, C2PSA, _Folded)), split_block))


def fold_model(model: nn.Module) -> list[str]:
    """Fold every split block back to one ``cv1`` conv, in place; returns the names of the blocks that stay yolo-prune
    classes (unequal halves), i.e. why the model would need yolo-prune to load."""
    list(_swap(model, lambda m: isinstance(m, _SplitCv1), fold_block))
    return needs_yolo_prune(model)


def needs_yolo_prune(model: nn.Module) -> list[str]:
    """Names of the modules whose class is yolo-prune's: a checkpoint holding any of them needs yolo-prune to load."""
    return [n for n, m in model.named_modules() if type(m).__module__.split(".")[0] == __name__.split(".")[0]]
