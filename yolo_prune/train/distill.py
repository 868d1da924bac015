"""Distillation while pruning: Ultralytics' ``DistillationModel`` kept consistent through prune steps.

Ultralytics 8.4 trains with a teacher when ``distill_model=`` is set: the trainer wraps the model in
``DistillationModel`` (the student, a frozen teacher, and per neck level a projector of two 1x1 convs mapping the
student's features to the teacher's widths, with loss weight ``dis``). The projectors are sized to the student once,
at setup. A prune step narrows the student's neck features, so here each projector keeps the input channels the
detection head's first conv at that level keeps (both read the same feature map).

``prune_distill=True`` makes the teacher the model itself as it was just before its first prune step. The wrapper is
built when training starts (so ``dis_loss`` is a results.csv column from the first epoch) with the distillation weight
at 0; at the first step the teacher takes the EMA weights, ``weights/teacher.pt`` is rewritten and ``dis`` switches on.
``distill_model`` names that file in the run's args, so ``resume=True`` rebuilds the teacher the way Ultralytics does
for any teacher. Checkpoints hold the student (and projectors) only, as Ultralytics' EMA strips the teacher.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

try:  # Ultralytics >= 8.4.77 (yolo_prune.support gates every way into distillation on earlier releases)
    from ultralytics.nn.distill_model import DistillationModel
except ImportError:
    DistillationModel = type("DistillationModel", (nn.Module,), {})  # no model is one: isinstance checks say so

from ..cfg import PruneError
from ..checkpoint import is_distilling, save_checkpoint, student_of
from .ddp import rewrap_ddp

TEACHER = "teacher.pt"  # prune_distill's teacher, in the run's weights folder


@contextlib.contextmanager
def hooks_off(trainer):
    """No feature hooks on the student (live and EMA) inside: a prune step traces and deep-copies the student, and
    the wrapper's hooks would store traced tensors that cannot be deep-copied (or pickled). Re-registered on exit."""

    def wrappers():
        return [
            m
            for m in (unwrap_model(trainer.model), getattr(trainer.ema, "ema", None))
            if isinstance(m, DistillationModel)
        ]

    for w in wrappers():
        w._remove_feature_hooks()
        w._student_feats.clear()
        w._teacher_feats.clear()
    try:
        yield
    finally:
        for w in wrappers():
            w._register_feature_hooks()


def projector_inputs(wrapper: DistillationModel) -> tuple[str, ...]:
    """Per projector, the student module (by name) whose input channels are the projector's: the head's first box conv
    at that level (``DistillationModel`` takes the head's inputs, ``Detect.f``, in order)."""
    student = wrapper.student_model
    head = student.model[-1]
    names = {id(m): n for n, m in student.named_modules()}
    return tuple(names[id(head.cv2[i][0].conv)] for i in range(len(wrapper.projector)))


def resize_projectors(wrapper: DistillationModel, kept: dict[str, list[int]]) -> None:
    """Keep in each projector's first conv the input channels the student kept (``kept``: see :func:`projector_inputs`).

    The wrapper may be the live model or its EMA copy; both hold projectors of the same widths before the step.
    """
    for i, name in enumerate(projector_inputs(wrapper)):
        old = wrapper.projector[i][0]
        keep = kept[name]
        if len(keep) == old.in_channels:
            continue
        new = nn.Conv2d(
            len(keep), old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
        )
        new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[:, keep])
            if old.bias is not None:
                new.bias.copy_(old.bias)
        new.weight.requires_grad_(old.weight.requires_grad)
        wrapper.projector[i][0] = new


def check_projectors(wrapper: DistillationModel, imgsz: int = 64) -> None:
    """Run the student on a dummy batch and every projector on its features: a width mismatch raises here."""
    student = wrapper.student_model
    p = next(student.parameters())
    was = student.training
    student.eval()
    try:
        with torch.no_grad():
            wrapper._student_feats.clear()
            student(torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype))
            for i, proj in enumerate(wrapper.projector):
                # features are stored by level i since Ultralytics 8.4.164 (teacher_feats_idx), by layer index before
                key = i if hasattr(wrapper, "teacher_feats_idx") else wrapper.feats_idx[i]
                proj(wrapper.decouple_outputs(wrapper._student_feats[key]))
    finally:
        wrapper._student_feats.clear()
        student.train(was)


def _write_teacher(trainer, teacher: nn.Module) -> None:
    """``weights/teacher.pt`` (rank 0, atomically): what ``distill_model`` names, so resume rebuilds this teacher."""
    if RANK in {-1, 0}:
        snapshot = copy.copy(teacher)  # shallow: only the attributes below differ from the live teacher
        snapshot.__dict__.pop("prune_state", None)  # the teacher is the unpruned model, not a schedule to continue
        snapshot.args = dict(vars(trainer.args))
        save_checkpoint(snapshot, trainer.wdir / TEACHER, dict(vars(trainer.args)))


def start_self_distillation(trainer) -> None:
    """Wrap the trainer's model with a frozen copy of itself as teacher, distillation weight 0 until the first step.

    Done at ``on_pretrain_routine_end``, after Ultralytics' own setup: the EMA is renewed around the wrapper (the
    teacher stripped, as Ultralytics does), the teacher frozen like ``freeze_layer_names`` would, and the optimizer
    rebuilt by the caller so that it holds the projectors.
    """
    student = student_of(trainer.model)
    teacher = copy.deepcopy(student)
    teacher.__dict__.pop("prune_state", None)
    trainer.args.distill_model = str(trainer.wdir / TEACHER)
    _write_teacher(trainer, teacher)
    wrapper = DistillationModel(teacher_model=teacher, student_model=student)
    wrapper.dis = 0.0
    trainer.freeze_layer_names.append("teacher_model.")
    ddp = isinstance(trainer.model, nn.parallel.DistributedDataParallel)
    trainer.model = rewrap_ddp(trainer.model, wrapper) if ddp else wrapper
    trainer.ema = ModelEMA(wrapper, updates=trainer.ema.updates if trainer.ema else 0)
    trainer.ema.ema.dis = 0.0


def compile_off(args) -> None:
    """Turn ``compile`` off in the trainer's args, with Ultralytics' own warning for ``distill_model``: the wrapper is
    run eagerly."""
    if args.compile:
        LOGGER.warning("'compile' is not supported with knowledge distillation and will be disabled.")
        args.compile = False


def set_weight(trainer, dis: float) -> None:
    """The distillation loss weight of the live wrapper and its EMA copy."""
    unwrap_model(trainer.model).dis = dis
    if trainer.ema is not None and isinstance(trainer.ema.ema, DistillationModel):
        trainer.ema.ema.dis = dis


def refresh_teacher(trainer) -> None:
    """The teacher becomes the model as it is now, before the first prune step (its EMA weights); distillation on."""
    wrapper = unwrap_model(trainer.model)
    source = student_of(trainer.ema.ema) if trainer.ema is not None else wrapper.student_model
    wrapper.teacher_model.load_state_dict(source.state_dict())
    wrapper._freeze_teacher()
    _write_teacher(trainer, wrapper.teacher_model)
    set_weight(trainer, float(trainer.args.dis))
    LOGGER.info(
        f"yolo-prune: distilling from the model as it was before the first prune step (dis={trainer.args.dis}, "
        f"{trainer.wdir / TEACHER})"
    )


def begin(trainer, state: dict) -> bool:
    """``prune_distill`` at the start of a run: wrap the model (distillation weight 0 until the first step), or on
    resume check that Ultralytics rebuilt the wrapper. Returns whether the optimizer must be rebuilt (it must hold the
    projectors).

    Raises:
        PruneError: A resumed ``prune_distill`` checkpoint that names no teacher.
    """
    wrapped = False
    if not is_distilling(trainer.model):
        if trainer.resume:  # Ultralytics rebuilds the wrapper from distill_model (weights/teacher.pt)
            raise PruneError(
                "model: this prune_distill run's checkpoint names no teacher (distill_model); accepted: resume a "
                "last.pt written by yolo-prune with prune_distill=True"
            )
        start_self_distillation(trainer)
        wrapped = True
        if trainer.args.dis == DEFAULT_CFG.dis:
            LOGGER.warning(
                f"yolo-prune: prune_distill with dis={trainer.args.dis} (Ultralytics' default): on the shipped "
                f"shapes models it scored about 1 mAP50-95 point below dis=1.0 "
                f"(benchmarks/results/accuracy_converged.md); set dis= to choose the distillation weight"
            )
    if state["done"] == 0:
        set_weight(trainer, 0.0)
    LOGGER.info(
        f"yolo-prune: prune_distill: the teacher is the model as it is at the first prune step (epoch "
        f"{state['schedule'][0] + 1}); dis={trainer.args.dis} from then on"
        if state["done"] == 0
        else f"yolo-prune: prune_distill: distilling from {trainer.args.distill_model} (dis={trainer.args.dis})"
    )
    return wrapped
