"""A pruned head trained on another class set: only the class outputs are rebuilt, every pruned width stays.

Ultralytics builds a new model from ``model.yaml`` with the dataset's ``nc`` and copies the tensors whose shapes match,
which re-creates the class-output convs and keeps the rest. A pruned model cannot be rebuilt from its yaml (the widths
are not in it), so the same result is made in place: new class-output layers at the pruned input widths, initialised
the way ``Detect.bias_init`` / ``Classify`` do.
"""

from __future__ import annotations

import copy
import math

import torch.nn as nn


def class_count(model: nn.Module) -> int:
    """The number of classes the model's head predicts."""
    head = model.model[-1]
    return head.linear.out_features if hasattr(head, "linear") else int(head.nc)


def _new_like(old: nn.Module, out: int) -> nn.Module:
    """A fresh layer like ``old`` (Conv2d or Linear) with ``out`` outputs, on its device and dtype."""
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, out, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, out, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    return new.to(device=old.weight.device, dtype=old.weight.dtype)


def _new_class_conv(old: nn.Conv2d, nc: int, stride: float) -> nn.Conv2d:
    """A class-output conv like ``old`` with ``nc`` outputs and the class prior of ``Detect.bias_init`` (.01 objects
    per 640 px image)."""
    new = _new_like(old, nc)
    if new.bias is not None:
        new.bias.data[:] = math.log(5 / nc / (640 / stride) ** 2)
    return new


def set_class_count(model: nn.Module, nc: int) -> int:
    """Give ``model``'s head ``nc`` classes: rebuild its class-output layers; returns how many were rebuilt.

    Detect-type heads (detect, segment, pose, obb; YOLO26's one-to-one copy and YOLO26-seg's semantic head too) get new
    last convs of ``cv3`` with the class bias prior of ``Detect.bias_init`` (box convs and the rest keep their trained
    weights); Classify gets a new ``linear``. The loss criterion is dropped so it is rebuilt for the new class count.
    """
    head = model.model[-1]
    rebuilt = 0
    if hasattr(head, "linear"):
        head.linear = _new_like(head.linear, nc)
        rebuilt = 1
    else:
        fresh = []
        for i, seq in enumerate(head.cv3):
            seq[-1] = _new_class_conv(seq[-1], nc, float(head.stride[i]))
            fresh.append(seq[-1])
            rebuilt += 1
        o2o = getattr(head, "one2one_cv3", None)
        if o2o is not None:  # Ultralytics builds one2one_cv3 as a copy of cv3: the same start where widths allow
            for i, (seq, new) in enumerate(zip(o2o, fresh)):
                same = seq[-1].in_channels == new.in_channels  # a global or latency plan may prune them apart
                seq[-1] = copy.deepcopy(new) if same else _new_class_conv(seq[-1], nc, float(head.stride[i]))
                rebuilt += 1
        semseg = getattr(getattr(head, "proto", None), "semseg", None)
        if semseg is not None:  # YOLO26-seg's training-only semantic head predicts one map per class
            semseg[-1] = _new_like(semseg[-1], nc)
            rebuilt += 1
        head.nc = nc
        head.no = nc + head.reg_max * 4
    if isinstance(getattr(model, "yaml", None), dict):
        model.yaml["nc"] = nc
    model.nc = nc
    if hasattr(model, "criterion"):
        model.criterion = None
    return rebuilt
