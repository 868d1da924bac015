"""The Ultralytics trainer side: a DetectionTrainer that keeps pruned shapes, and rebuilding training state after a step.

Stock ``Model.train()`` and resume rebuild the network from ``model.yaml`` and copy only shape-matching tensors, which
silently trains the original size (or fails on resume with an optimizer group size mismatch). ``get_model`` here
returns a pruned module as it is instead.
"""

from __future__ import annotations

import copy
import inspect
import io
import logging
import math
from copy import deepcopy

import torch
import torch.distributed as dist
import torch.nn as nn
import ultralytics
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

from .blocks import needs_yolo_prune
from .cfg import SUPPORTED_ULTRALYTICS, PruneError
from .checkpoint import atomic_write_bytes
from .datasets import resolve_data
from .distill import compile_off, is_distilling, projector_inputs, resize_projectors, student_of
from .heads import class_count, set_class_count
from .plan import PrunePlan, apply_plan, apply_plan_watching


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

    def __init__(self, *args, **kwargs):
        """The stock trainer, with ``compile`` off when ``prune_distill`` will wrap the model for distillation.

        Ultralytics turns compile off for ``distill_model`` in ``_setup_train`` on every rank; ``prune_distill`` wraps
        the model later, so it is turned off here, where every DDP rank (and the launcher, whose args the workers get)
        passes: a callback would run on rank 0 only and leave the ranks compiling differently.
        """
        super().__init__(*args, **kwargs)
        from .callbacks import PruneCallbacks  # callbacks imports this module

        owners = (getattr(fn, "__self__", None) for fns in self.callbacks.values() for fn in fns)
        if any(isinstance(o, PruneCallbacks) and o.cfg["prune_distill"] for o in owners):
            compile_off(self.args)

    def get_dataset(self):
        """Resolve built-in dataset names (``shapes`` follows the task: ``shapes-seg`` for segment) first."""
        self.args.data = resolve_data(self.args.data, self.args.task)
        return super().get_dataset()

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """Return a pruned ``weights`` module unchanged; anything else goes the stock way (build from cfg, load).

        A distillation checkpoint (a run's epoch{N}.pt or unstripped last.pt) starts from its student.
        """
        if weights is not None and is_distilling(weights):
            weights = student_of(weights)
        if weights is None or not is_pruned(weights):
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        nc = class_count(weights)
        if nc != self.data["nc"]:  # transfer learning, as Ultralytics does it: new class outputs, the rest kept
            n = set_class_count(weights, self.data["nc"])
            LOGGER.info(
                f"yolo-prune: the data has nc={self.data['nc']} and the model nc={nc}: rebuilt {n} class-output "
                f"layers at the pruned widths; every other layer keeps its pruned width and weights"
            )
        if verbose:
            LOGGER.info("yolo-prune: training the pruned model as it is (no rebuild from model.yaml)")
        if hasattr(self, "set_model_names_for_load"):
            return self.set_model_names_for_load(weights)
        for p in weights.parameters():
            p.requires_grad = True  # as ClassificationTrainer.get_model does
        return weights

    def validate(self):
        """Validation metrics plus the model's size columns (``model/params_M``, ``model/GFLOPs``, ...).

        ``trainer.metrics`` is the route every integration (TensorBoard, W&B, MLflow, ClearML, Comet, DVC) and
        results.csv read metrics from; ``validate`` replaces it each epoch, so the columns are added here, from what
        PruneCallbacks measured at the end of this epoch's training.
        """
        metrics, fitness = super().validate()
        if metrics is not None:
            metrics.update(getattr(self, "prune_metrics", None) or {})
        return metrics, fitness


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
    student = student_of(model)
    watch = projector_inputs(model) if is_distilling(model) else ()
    kept = apply_plan_watching(student, plan, watch)
    if watch:  # distillation: the projectors read the narrowed features
        resize_projectors(model, kept)
    if trainer.ema is not None:
        apply_plan(student_of(trainer.ema.ema), plan)
        if watch:
            resize_projectors(trainer.ema.ema, kept)
        student_of(trainer.ema.ema).prune_state = getattr(student, "prune_state", None)
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


def build_like_ultralytics(trainer, name: str | None = None) -> torch.optim.Optimizer:
    """An optimizer for the trainer's current parameters, built with the call ``_build_train_pipeline`` makes.

    ``name`` defaults to the type of the live optimizer (``optimizer=auto`` has already chosen it). The group layout
    (weight / bn / bias, MuSGD's muon groups and its boosted head groups) follows from the model, so it matches the
    live optimizer's; hyperparameters are then copied from that one (:func:`copy_hyperparameters`).
    """
    args = trainer.args
    accumulate = max(round(args.nbs / trainer.batch_size), 1)
    weight_decay = args.weight_decay * trainer.batch_size * accumulate / args.nbs
    iterations = math.ceil(len(trainer.train_loader.dataset) / max(trainer.batch_size, args.nbs)) * trainer.epochs
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)  # build_optimizer logs its choice; it was logged once already at the start
    try:
        return trainer.build_optimizer(
            model=trainer.model,
            name=name or type(trainer.optimizer).__name__,
            lr=args.lr0,
            momentum=args.momentum,
            decay=weight_decay,
            iterations=iterations,
        )
    finally:
        LOGGER.setLevel(level)


def optimizer_layout(optimizer: torch.optim.Optimizer) -> list[tuple[str | None, bool]]:
    """(param_group tag, has parameters) per group, in order: what must match for hyperparameters to carry over.

    Parameter counts may differ (a prune step's two-conv blocks hold one more conv), the groups' roles may not.
    """
    return [(g.get("param_group"), bool(g["params"])) for g in optimizer.param_groups]


def copy_hyperparameters(src: torch.optim.Optimizer, dst: torch.optim.Optimizer) -> None:
    """Give every group of ``dst`` the hyperparameters of the same group of ``src`` (lr, initial_lr, momentum or
    betas, weight_decay, MuSGD's flags: everything but the parameters).

    Reading one lr and rebuilding from it is wrong whenever groups differ: MuSGD boosts the head's groups to 3x lr0,
    warmup gives the bias group its own lr, and auto picks AdamW's betas itself. Copying group by group keeps exactly
    what Ultralytics has at this point of the schedule, for every optimizer.
    """
    if optimizer_layout(src) != optimizer_layout(dst):
        raise RuntimeError(
            f"yolo-prune: rebuilt optimizer groups {optimizer_layout(dst)} differ from the live ones "
            f"{optimizer_layout(src)}; supported: {SUPPORTED_ULTRALYTICS}"
        )
    for old, new in zip(src.param_groups, dst.param_groups):
        new.update({k: v for k, v in old.items() if k != "params"})


def rebuild_optimizer(trainer, epoch: int | None = None) -> None:
    """New optimizer and scheduler for the current parameters, at the trainer's current epoch.

    Every group keeps the live optimizer's hyperparameters (see :func:`copy_hyperparameters`); the scheduler is set up
    the way Ultralytics does and placed at the same epoch. Optimizer state (momentum buffers) starts afresh: its
    tensors have the old shapes.
    """
    old = trainer.optimizer
    trainer.optimizer = build_like_ultralytics(trainer)
    copy_hyperparameters(old, trainer.optimizer)
    trainer._setup_scheduler()  # LambdaLR's first step rewrites lr from initial_lr: copy again below
    copy_hyperparameters(old, trainer.optimizer)
    trainer.scheduler.base_lrs = [g["initial_lr"] for g in trainer.optimizer.param_groups]
    epoch = trainer.epoch if epoch is None else epoch
    trainer.scheduler.last_epoch = epoch - 1  # the epoch loop steps it right after on_train_epoch_start
    trainer.optimizer.zero_grad()


def check_internals(trainer) -> None:
    """Stop before any training if an Ultralytics internal the prune step relies on is not as expected.

    Checked: the optimizer's group tags and a rebuild with the same layout, the scheduler setup, ModelEMA's fields and
    tensor cache, the early stopper's fields, and the checkpoint paths. A mismatch raises PruneError naming it.
    """
    problems = []
    opt = trainer.optimizer
    tags = {g.get("param_group") for g in opt.param_groups}
    if not tags <= {"weight", "bn", "bias", "muon"} or not all("initial_lr" in g for g in opt.param_groups):
        problems.append(f"optimizer param_group tags {sorted(map(str, tags))}")
    else:
        try:
            if optimizer_layout(build_like_ultralytics(trainer)) != optimizer_layout(opt):
                problems.append("BaseTrainer.build_optimizer group layout")
        except Exception as e:  # a changed signature or attribute
            problems.append(f"BaseTrainer.build_optimizer ({type(e).__name__}: {e})")
    if not callable(getattr(trainer, "_setup_scheduler", None)) or not hasattr(trainer.scheduler, "last_epoch"):
        problems.append("BaseTrainer._setup_scheduler / scheduler.last_epoch")
    ema = trainer.ema
    if ema is not None and not all(hasattr(ema, a) for a in ("ema", "updates", "decay", "enabled", "_pairs")):
        problems.append("ModelEMA fields (ema, updates, decay, enabled, _pairs tensor cache)")
    if not all(hasattr(trainer.stopper, a) for a in ("best_fitness", "best_epoch", "possible_stop", "patience")):
        problems.append("EarlyStopping fields (best_fitness, best_epoch, possible_stop, patience)")
    if not all(hasattr(trainer, a) for a in ("last", "wdir", "best_fitness", "save_model")):
        problems.append("BaseTrainer checkpoint fields (last, wdir, best_fitness, save_model)")
    if problems:
        raise PruneError(
            f"ultralytics {ultralytics.__version__}: {problems[0]} is not what yolo-prune relies on; "
            f"supported: {SUPPORTED_ULTRALYTICS}"
        )


def save_after_step(trainer) -> bool:
    """Rewrite last.pt as the end of the previous epoch plus this prune step, atomically; fire ``on_model_save``.

    NaN recovery and resume reload last.pt into the live model, and an unpruned last.pt would no longer fit it. The
    checkpoint Ultralytics wrote at the end of the previous epoch is kept as it is (its epoch, train_args, results)
    with the pruned EMA, its update count, the new optimizer and restarted best-fitness tracking swapped in. No
    epoch{N}.pt (``save_period``) and no best.pt is touched. Returns whether last.pt was written.
    """
    if RANK not in {-1, 0} or trainer.epoch == 0 or not trainer.args.save or not trainer.last.is_file():
        return False  # before the first epoch ends there is nothing to resume or recover from
    ckpt = torch.load(trainer.last, map_location="cpu", weights_only=False)
    ema = deepcopy(trainer.ema.ema).half().to(memory_format=torch.contiguous_format)
    if hasattr(ema, "criterion"):
        ema.criterion = None  # training-only state, as save_model strips it
    for v in ema.state_dict().values():  # fp16 overflow clamped, as save_model does
        if v.is_floating_point():
            torch.nan_to_num_(v)
    ckpt.update(
        ema=ema,
        model=None,
        updates=trainer.ema.updates,
        optimizer=trainer.optimizer.state_dict(),
        best_fitness=trainer.best_fitness,
        stopper={"best_fitness": trainer.stopper.best_fitness, "best_epoch": trainer.stopper.best_epoch},
    )
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    atomic_write_bytes(trainer.last, buffer.getvalue())
    trainer.run_callbacks("on_model_save")
    return True


def broadcast_from_rank0(obj):
    """Rank 0's object on every rank (a no-op outside torch.distributed): a plan, so all ranks remove the same
    channels, or a decision only rank 0 can make (the latency table's)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        obj = box[0]
    return obj


broadcast_plan = broadcast_from_rank0  # the name the step and its tests use for plans


def trainer_batches(trainer, n: int):
    """Up to ``n`` preprocessed batches from the trainer's own train loader (for gradient criteria).

    The loader is infinite (a repeating sampler), so taking batches here only shifts where the next epoch starts.
    """
    it = iter(trainer.train_loader)
    for _ in range(min(n, len(trainer.train_loader))):
        yield trainer.preprocess_batch(next(it))


def trainer_loss(trainer):
    """``batch -> scalar loss`` of the unwrapped model (no DDP gradient sync), under the trainer's autocast.

    With distillation, the student's own loss: the ranking needs no teacher (and its feature hooks are off in a step).
    """
    model = student_of(trainer.model)

    def loss(batch):
        with torch.autocast(device_type=trainer.device.type, enabled=bool(trainer.amp)):
            return model(batch)[0].sum()

    return loss
