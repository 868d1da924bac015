"""Pruning-friendly drop-in replacements for Ultralytics blocks whose forward splits one conv's output in two.

torch-pruning cannot map channel indices through ``chunk``/``split`` of a single conv (IndexError on stock C2f/C3k2,
and the stock forward needs two equal halves). These blocks hold the two halves as two convs, so every channel has
one owner and the halves may end up with different widths. They are real classes in an importable module so that
``deepcopy`` (ModelEMA), ``torch.save`` and Ultralytics' checkpoint loader work on them.
"""

from __future__ import annotations

import copy

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


class _SplitCv1(nn.Module):
    """Shared construction: the stock block's ``cv1`` (c1 -> 2c) becomes ``cv0`` (first c) and ``cv1`` (second c)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        c = block.c
        self.c = c
        self.cv0 = _split_conv(block.cv1, 0, c)
        self.cv1 = _split_conv(block.cv1, c, 2 * c)
        self.cv2 = block.cv2
        self.m = block.m
        for attr in ("i", "f", "type", "np"):  # Ultralytics' graph bookkeeping set by parse_model
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))


class C2fSplit(_SplitCv1):
    """C2f / C3k2 with ``cv1`` held as two convs (``cv0`` -> first half, ``cv1`` -> second half).

    Output is identical to the stock block. Not a ``C2f`` subclass, so the exporter does not swap in
    ``forward_split``; ``forward_split`` is still defined because some code paths call it by name.
    """

    def __init__(self, block: C2f):
        """Build from a stock C2f-family block, copying weights and BN statistics."""
        super().__init__(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same computation as ``C2f.forward``."""
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    forward_split = forward


class C2PSASplit(_SplitCv1):
    """C2PSA with ``cv1`` held as two convs: ``cv0`` feeds the bypass, ``cv1`` the PSA blocks."""

    def __init__(self, block: C2PSA):
        """Build from a stock C2PSA, copying weights and BN statistics."""
        super().__init__(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same computation as ``C2PSA.forward``."""
        return self.cv2(torch.cat((self.cv0(x), self.m(self.cv1(x))), 1))
