"""Unstructured and 2:4 sparsity (``prune_mode=unstructured|2:4``): weights are zeroed in place, shapes stay.

Masks come from ``torch.nn.utils.prune`` and are made permanent at once (``prune.remove``), so models and checkpoints
never carry ``weight_orig`` / ``weight_mask`` reparametrisations (which Ultralytics' EMA, checkpoints and exporter do not
expect). While fine-tuning, the masks are re-applied after every optimizer step so removed weights stay zero; the EMA
follows, since it blends in zeros. After a resume the masks are read back from the zeros themselves.

Only 2:4 on GPUs with sparse tensor cores (NVIDIA Ampere and later, through TensorRT) runs faster; dense CPU kernels
gain nothing from zeros. Unstructured sparsity makes the compressed file smaller, not the model faster.
"""

from __future__ import annotations

import gzip
import io

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune
from ultralytics.utils.torch_utils import unwrap_model

from .graph import output_layers

def _in_dim(m: nn.Conv2d) -> int:
    return m.in_channels // m.groups


def eligible_layers(model: nn.Module, mode: str) -> dict[str, nn.Module]:
    """Conv/linear layers that may be sparsified: not the output layers, not depthwise; for 2:4 also the input
    channels (per group) must come in fours."""
    model = unwrap_model(model)
    keep = {id(m) for m in output_layers(model)}
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or id(m) in keep:
            continue
        cin = _in_dim(m) if isinstance(m, nn.Conv2d) else m.in_features
        if isinstance(m, nn.Conv2d) and m.groups > 1 and cin == 1:
            continue  # depthwise: a handful of weights per channel, nothing to gain
        if mode == "2:4" and cin % 4:
            continue
        out[name] = m
    return out


def two_four_mask(w: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest of every 4 consecutive input-channel weights (per output channel and kernel position)."""
    x = w.abs().movedim(1, -1) if w.ndim == 4 else w.abs()  # (out, kh, kw, cin): the layout sparse kernels group by
    g = x.reshape(*x.shape[:-1], -1, 4)
    top = g.topk(2, dim=-1).indices
    mask = torch.zeros_like(g).scatter_(-1, top, 1.0).reshape(x.shape)
    return mask.movedim(-1, 1) if w.ndim == 4 else mask


def sparsify(model: nn.Module, amount: float, mode: str = "unstructured") -> dict[str, torch.Tensor]:
    """Zero weights of ``model`` in place; returns the masks by layer name.

    ``unstructured``: the fraction ``amount`` of all eligible weights with the smallest magnitude, ranked globally.
    ``2:4``: two of every four weights in each eligible layer (``amount`` is ignored: it is 0.5 by construction).
    """
    layers = eligible_layers(model, mode)
    if mode == "unstructured":
        tprune.global_unstructured(
            [(m, "weight") for m in layers.values()], pruning_method=tprune.L1Unstructured, amount=float(amount)
        )
    else:
        for m in layers.values():
            tprune.custom_from_mask(m, "weight", two_four_mask(m.weight.detach()))
    masks = {}
    for name, m in layers.items():
        masks[name] = m.weight_mask.detach().clone()
        tprune.remove(m, "weight")  # permanent: a plain weight Parameter with zeros, nothing extra to save
    return masks


def masks_from_zeros(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """Masks of an already sparsified model (after a resume): a weight that is exactly zero stays zero."""
    return {n: (m.weight.detach() != 0).float() for n, m in eligible_layers(model, mode).items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Multiply each named layer's weight by its mask (any structurally identical model: live, EMA)."""
    modules = dict(unwrap_model(model).named_modules())
    for name, mask in masks.items():
        w = modules[name].weight
        w.mul_(mask.to(w.device, w.dtype))


def sparsity(model: nn.Module, mode: str = "unstructured") -> float:
    """Fraction of exactly-zero weights over the eligible layers."""
    layers = eligible_layers(model, mode).values()
    total = sum(m.weight.numel() for m in layers)
    return sum(int((m.weight == 0).sum()) for m in layers) / max(total, 1)


def compressed_mb(model: nn.Module) -> float:
    """Size of the fp16 state dict after gzip, in MB: what unstructured sparsity buys."""
    buf = io.BytesIO()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in unwrap_model(model).state_dict().items()}, buf)
    return len(gzip.compress(buf.getvalue(), compresslevel=6)) / 1e6


class MaskKeeper:
    """Re-apply masks after every step of one optimizer, so fine-tuning cannot regrow removed weights."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        self.model, self.masks = model, masks
        self.optimizer = None
        self._handle = None

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        if self._handle is not None:
            self._handle.remove()
        self.optimizer = optimizer
        self._handle = optimizer.register_step_post_hook(lambda *_: apply_masks(self.model, self.masks))
