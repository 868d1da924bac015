"""Sparsity training (``prune_sparsity=lambda``): an L1 penalty on BatchNorm scales, as a proximal step.

Network slimming adds ``lambda * sum(|gamma|)`` to the loss so that unimportant channels shrink before they are cut.
Ultralytics has no hook between ``backward`` and ``optimizer.step``, so the penalty is applied as its proximal operator
right after each optimizer step (``torch.optim.Optimizer.register_step_post_hook``): every penalised scale moves
``lr * lambda`` towards zero and stops there (soft-thresholding), which also leaves exact zeros that the ``bn``
criterion removes first.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from ultralytics.nn.modules.block import Attention
from ultralytics.utils.torch_utils import unwrap_model


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
                if g is not None:  # a frozen layer's BatchNorm is not in the optimizer and stays as it is
                    soft_threshold([m], g["lr"] * self.lam)
