"""The Ultralytics trainer side: a DetectionTrainer that keeps pruned shapes, and rebuilding training state after a step.

Stock ``Model.train()`` and resume rebuild the network from ``model.yaml`` and copy only shape-matching tensors, which
silently trains the original size (or fails on resume with an optimizer group size mismatch). ``get_model`` here
returns a pruned module as it is instead.
"""

from __future__ import annotations

import copy
import inspect
import math

import torch
import torch.distributed as dist
import torch.nn as nn
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

from .blocks import needs_yolo_prune
from .cfg import PruneError
from .datasets import resolve_data
from .engine import PrunePlan, apply_plan


def is_pruned(model: nn.Module) -> bool:
    """Whether a rebuild from ``model.yaml`` would lose something: pruning state, yolo-prune blocks, or any parameter
    whose shape differs from the yaml's (a one-shot pruned model folds back to Ultralytics' classes, so only the
    shapes tell)."""
    model = unwrap_model(model)
    if hasattr(model, "prune_state") or needs_yolo_prune(model):
        return True
    cfg = getattr(model, "yaml", None)
    if not isinstance(cfg, dict):
        return False  # nothing to rebuild from: the stock path decides
    kwargs = {"verbose": False}
    if "kpt_shape" in cfg:
        kwargs["data_kpt_shape"] = tuple(cfg["kpt_shape"])
    try:
        # the yaml holds the final nc / kpt_shape / channels; fork_rng: the throwaway init must not shift the seed
        with torch.random.fork_rng(devices=[]):
            ref = type(model)(copy.deepcopy(cfg), **kwargs)
    except Exception:  # noqa: BLE001  a class or yaml this Ultralytics cannot rebuild: neither can the stock path
        return False
    shapes = {k: v.shape for k, v in ref.state_dict().items()}
    return any(k in shapes and v.shape != shapes[k] for k, v in model.state_dict().items())


class PruneTrainerMixin:
    """What every task's pruning trainer adds: built-in data names resolved for its task, pruned models kept as is."""

    def get_dataset(self):
        """Resolve built-in dataset names (``shapes`` follows the task: ``shapes-seg`` for segment) first."""
        self.args.data = resolve_data(self.args.data, self.args.task)
        return super().get_dataset()

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """Return a pruned ``weights`` module unchanged; anything else goes the stock way (build from cfg, load)."""
        if weights is None or not is_pruned(weights):
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        head = unwrap_model(weights).model[-1]
        nc = head.linear.out_features if hasattr(head, "linear") else head.nc
        if nc != self.data["nc"]:
            raise PruneError(
                f"data: has nc={self.data['nc']} but the pruned model predicts nc={nc}; accepted: a dataset "
                f"with the model's {nc} classes (a pruned head cannot be rebuilt for another class count)"
            )
        if verbose:
            LOGGER.info("yolo-prune: training the pruned model as it is (no rebuild from model.yaml)")
        if hasattr(self, "set_model_names_for_load"):
            return self.set_model_names_for_load(weights)
        for p in weights.parameters():
            p.requires_grad = True  # as ClassificationTrainer.get_model does
        return weights


class PruneDetectionTrainer(PruneTrainerMixin, DetectionTrainer):
    """DetectionTrainer that trains pruned models as they are and accepts built-in dataset names (``data=shapes``)."""


class PruneSegmentationTrainer(PruneTrainerMixin, SegmentationTrainer):
    """SegmentationTrainer with yolo-prune's model and data handling (see :class:`PruneTrainerMixin`)."""


class PrunePoseTrainer(PruneTrainerMixin, PoseTrainer):
    """PoseTrainer with yolo-prune's model and data handling (see :class:`PruneTrainerMixin`)."""


class PruneOBBTrainer(PruneTrainerMixin, OBBTrainer):
    """OBBTrainer with yolo-prune's model and data handling (see :class:`PruneTrainerMixin`)."""


class PruneClassificationTrainer(PruneTrainerMixin, ClassificationTrainer):
    """ClassificationTrainer with yolo-prune's model and data handling (see :class:`PruneTrainerMixin`)."""


TRAINERS = {
    "detect": PruneDetectionTrainer,
    "segment": PruneSegmentationTrainer,
    "pose": PrunePoseTrainer,
    "obb": PruneOBBTrainer,
    "classify": PruneClassificationTrainer,
}


def apply_step(trainer, plan: PrunePlan) -> None:
    """Apply ``plan`` to the live model and its EMA, then rebuild everything that held the old tensors.

    Rebuilt: the DDP wrapper, the optimizer (same decay and iteration formula as ``_build_train_pipeline``), the LR
    scheduler (same epoch position); the freeze policy survives because ``apply_plan`` keeps each parameter's
    ``requires_grad`` by name. The EMA is pruned in place with the same plan, so its
    running average survives. The GradScaler and the loss hold no parameters and stay.
    """
    model = unwrap_model(trainer.model)
    apply_plan(model, plan)
    if trainer.ema is not None:
        apply_plan(trainer.ema.ema, plan)
        trainer.ema.ema.prune_state = getattr(model, "prune_state", None)
        trainer.ema = renew_ema(trainer.ema, model)
    if isinstance(trainer.model, nn.parallel.DistributedDataParallel):
        trainer.model = rewrap_ddp(trainer.model)
    rebuild_optimizer(trainer)


def renew_ema(ema: ModelEMA, model: nn.Module) -> ModelEMA:
    """A ModelEMA around the already pruned average ``ema.ema``, with the same update count.

    Ultralytics 8.4's ``ModelEMA.update`` caches (EMA tensor, model tensor) pairs on its first call; after a prune both
    sides are new tensors, so the old object would keep lerping the discarded ones and the EMA (used for validation and
    every checkpoint) would freeze at the prune. A new object has no cache; its ``ema`` is swapped for the pruned
    average so the running average survives.
    """
    new = ModelEMA(model, updates=ema.updates)
    new.ema, new.enabled, new.decay = ema.ema, ema.enabled, ema.decay
    return new


def rewrap_ddp(ddp: nn.parallel.DistributedDataParallel) -> nn.parallel.DistributedDataParallel:
    """A new DDP wrapper around the (pruned) module: DDP's buckets and parameter lists are fixed at construction."""
    kwargs = {"find_unused_parameters": ddp.find_unused_parameters, "static_graph": ddp.static_graph}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:  # torch >= 2.13
        kwargs["forward_sync_buffers"] = ddp.forward_sync_buffers
    else:
        kwargs["broadcast_buffers"] = ddp.broadcast_buffers
    return nn.parallel.DistributedDataParallel(
        ddp.module, device_ids=ddp.device_ids, output_device=ddp.output_device, **kwargs
    )


def rebuild_optimizer(trainer) -> None:
    """New optimizer and scheduler for the current parameters, at the trainer's current epoch.

    The optimizer type, lr and momentum are read from the live optimizer: with ``optimizer=auto`` Ultralytics picks
    them itself (e.g. AdamW with beta1 0.9, not ``args.momentum``), so rebuilding from ``args`` would change them.
    Decay and iterations use the same formula as ``_build_train_pipeline``.
    """
    args, old = trainer.args, trainer.optimizer
    group = next(g for g in old.param_groups if g.get("param_group") == "bias") if old else {}
    momentum = group["betas"][0] if "betas" in group else group.get("momentum", args.momentum)
    accumulate = max(round(args.nbs / trainer.batch_size), 1)
    weight_decay = args.weight_decay * trainer.batch_size * accumulate / args.nbs
    iterations = math.ceil(len(trainer.train_loader.dataset) / max(trainer.batch_size, args.nbs)) * trainer.epochs
    trainer.optimizer = trainer.build_optimizer(
        model=trainer.model,
        name=type(old).__name__ if old else args.optimizer,
        lr=group.get("initial_lr", args.lr0),
        momentum=momentum,
        decay=weight_decay,
        iterations=iterations,
    )
    trainer._setup_scheduler()
    trainer.scheduler.last_epoch = trainer.epoch - 1  # the epoch loop steps it right after on_train_epoch_start
    trainer.optimizer.zero_grad()


def broadcast_plan(plan: PrunePlan | None) -> PrunePlan:
    """Rank 0's plan on every rank (a no-op outside torch.distributed), so all ranks remove the same channels."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [plan if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    return plan


def trainer_batches(trainer, n: int):
    """Up to ``n`` preprocessed batches from the trainer's own train loader (for gradient criteria).

    The loader is infinite (a repeating sampler), so taking batches here only shifts where the next epoch starts.
    """
    it = iter(trainer.train_loader)
    for _ in range(min(n, len(trainer.train_loader))):
        yield trainer.preprocess_batch(next(it))


def trainer_loss(trainer):
    """``batch -> scalar loss`` of the unwrapped model (no DDP gradient sync), under the trainer's autocast."""
    model = unwrap_model(trainer.model)

    def loss(batch):
        with torch.autocast(device_type=trainer.device.type, enabled=bool(trainer.amp)):
            return model(batch)[0].sum()

    return loss
