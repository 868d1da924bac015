"""Channel importance criteria, kept apart from the engine the way torch-pruning separates them from its pruners.

A criterion is any callable ``(group) -> Tensor`` returning one score per channel of the group's root layer (higher
means keep). Register new ones with :func:`register`; ``prune_method=<name>`` picks them by name.

Gradient criteria (``taylor``, ``hessian``) read ``param.grad``: :func:`accumulate_gradients` fills it from real
batches (the trainer's own, or a dataset's for one-shot pruning) before the channels are ranked.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch_pruning as tp

from ..cfg import METHODS

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn": lambda: tp.importance.BNScaleImportance(),  # network slimming: |gamma| of the group's BatchNorms
    "taylor": lambda: tp.importance.GroupTaylorImportance(),  # |w * dL/dw|, first order
    "lamp": lambda: tp.importance.LAMPImportance(p=2),  # layer-adaptive magnitude, made for global ranking
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),  # geometric median: redundant filters go first
    "hessian": lambda: tp.importance.GroupHessianImportance(),  # w^2 * diag(H), H ~ mean squared gradients (OBD)
    "random": lambda: tp.importance.RandomImportance(),  # control: any criterion should beat it
    "sensitivity": lambda: tp.importance.GroupMagnitudeImportance(p=2),  # L2 inside layers; ratios from the CSV
}
# criteria that need gradients in param.grad, and which statistic: the mean gradient or the mean squared gradient
GRADIENT_METHODS: dict[str, str] = {"taylor": "grad", "hessian": "grad2"}
GRAD_BATCHES = 16  # real training batches whose gradients rank the channels, in the trainer and one-shot


def register(name: str, factory: Callable[[], tp.importance.Importance], gradients: str | None = None) -> None:
    """Make ``prune_method=name`` build its criterion with ``factory()``.

    Args:
        name: The new ``prune_method`` value.
        factory: Returns a torch-pruning importance (``tp.importance.Importance``) each time a plan is made.
        gradients: ``"grad"`` or ``"grad2"`` if the criterion reads accumulated gradients (then calibration batches
            run before each plan), else None.
    """
    IMPORTANCES[name] = factory
    if name not in METHODS:  # prune_method=name validates from now on
        METHODS.append(name)
    if gradients:
        GRADIENT_METHODS[name] = gradients


def unregister(name: str) -> None:
    """Forget a criterion :func:`register` added (``prune_method=name`` is refused again)."""
    IMPORTANCES.pop(name, None)
    GRADIENT_METHODS.pop(name, None)
    if name in METHODS:
        METHODS.remove(name)


def get_importance(name: str) -> tp.importance.Importance:
    """Return a fresh criterion for ``prune_method=name``."""
    if name not in IMPORTANCES:
        raise KeyError(name)
    return IMPORTANCES[name]()


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Train-mode forwards (the loss needs them) without moving BatchNorm running statistics."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom


def accumulate_gradients(
    model: nn.Module, batches: Iterable, loss_fn: Callable[[object], torch.Tensor], kind: str = "grad"
) -> int:
    """Leave in every ``param.grad`` the mean over ``batches`` of the gradient (``grad``) or its square (``grad2``).

    torch-pruning's own ``GroupHessianImportance.accumulate_grad`` keys its running sums by name but looks them up by
    parameter, so it keeps only the last batch; the sums are kept here instead. Returns the number of batches used.
    """
    params = [p for p in model.parameters()]
    sums = [torch.zeros_like(p) for p in params]
    n = 0
    was_training = model.training
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)  # frozen layers (.dfl) are ranked too
    model.train()
    try:
        with frozen_bn_stats(model):
            for batch in batches:
                model.zero_grad(set_to_none=True)
                loss_fn(batch).backward()
                for s, p in zip(sums, params):
                    if p.grad is not None:
                        s.add_(p.grad if kind == "grad" else p.grad.square())
                n += 1
    finally:
        model.train(was_training)
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    for s, p in zip(sums, params):
        p.grad = s / max(n, 1)
    return n
