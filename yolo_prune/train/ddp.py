"""What a prune step needs under DDP: one rank decides, every rank follows, and the wrapper is rebuilt.

A plan (and the latency table's verdict) is made on rank 0 and broadcast, so every rank removes the same channels;
DDP's buckets and parameter lists are fixed at construction, so the wrapper is rebuilt around the pruned module.
"""

from __future__ import annotations

import inspect

import torch.distributed as dist
import torch.nn as nn


def rewrap_ddp(
    ddp: nn.parallel.DistributedDataParallel, module: nn.Module | None = None
) -> nn.parallel.DistributedDataParallel:
    """A new DDP wrapper around the (pruned) module, or around ``module`` with the same settings: DDP's buckets and
    parameter lists are fixed at construction."""
    kwargs = {"find_unused_parameters": ddp.find_unused_parameters, "static_graph": ddp.static_graph}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:  # torch >= 2.13
        kwargs["forward_sync_buffers"] = ddp.forward_sync_buffers
    else:
        kwargs["broadcast_buffers"] = ddp.broadcast_buffers
    return nn.parallel.DistributedDataParallel(
        ddp.module if module is None else module, device_ids=ddp.device_ids, output_device=ddp.output_device, **kwargs
    )


def broadcast_from_rank0(obj):
    """Rank 0's object on every rank (a no-op outside torch.distributed): a plan, so all ranks remove the same
    channels, or a decision only rank 0 can make (the latency table's)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        obj = box[0]
    return obj
