"""Trainer surgery after a prune step: everything that held the old tensors is rebuilt, as Ultralytics built it.

torch-pruning makes new ``nn.Parameter`` objects, so after a step the DDP wrapper, the optimizer (same group layout
and hyperparameters, for every optimizer including MuSGD's boosted head groups), the LR scheduler (same epoch), the
EMA (same running average and update count) and ``last.pt`` (NaN recovery and resume reload it) are rebuilt here. Also
here: the check that those Ultralytics internals are what this relies on, and what a prune step on rank 0 shares with
the other DDP ranks.
"""

from __future__ import annotations

import io
import logging
import math
from copy import deepcopy

import torch
import torch.nn as nn
import ultralytics
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

from ..cfg import SUPPORTED_ULTRALYTICS, PruneError
from ..checkpoint import atomic_write_bytes, is_distilling, student_of
from ..engine.plan import PrunePlan, apply_plan, apply_plan_watching
from .ddp import rewrap_ddp
from .distill import projector_inputs, resize_projectors


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
        chosen = args.optimizer if args.optimizer != "auto" else type(trainer.optimizer).__name__
        return trainer.build_optimizer(
            model=trainer.model,
            name=name or chosen,  # the user's spelling (releases before 8.4.105 build MuSGD for 'RMSProp')
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
    # (8.4.154+ also caches tensor pairs in ModelEMA._pairs: renew_ema builds a new ModelEMA, so no cache survives)
    if ema is not None and not all(hasattr(ema, a) for a in ("ema", "updates", "decay", "enabled")):
        problems.append("ModelEMA fields (ema, updates, decay, enabled)")
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
