"""The Ultralytics trainers yolo-prune trains with: one per task, each keeping a pruned model's shapes.

Stock ``Model.train()`` and resume rebuild the network from ``model.yaml`` and copy only shape-matching tensors, which
silently trains the original size (or fails on resume with an optimizer group size mismatch). ``get_model`` here
returns a pruned module as it is instead. The mixin also checks a new run's plugin settings against the run's own
before Ultralytics creates the run folder, so a refused run leaves nothing behind.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from ultralytics.cfg import DEFAULT_CFG, get_cfg
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import unwrap_model

from ..cfg import PruneConfig
from ..checkpoint import is_distilling, student_of
from ..datasets import resolve_data
from ..engine.blocks import needs_yolo_prune
from ..engine.heads import class_count, set_class_count
from ..support import check_keys as check_features
from .distill import compile_off
from .schedule import new_schedule


def prune_config(callbacks: dict | None) -> PruneConfig | None:
    """The config of the :class:`~yolo_prune.PruneCallbacks` among a trainer's callbacks (their bound methods), if any.

    Duck-typed on the owner's ``cfg`` so this layer needs no import of the callbacks (which import it).
    """
    owners = (getattr(fn, "__self__", None) for fns in (callbacks or {}).values() for fn in fns)
    return next((o.cfg for o in owners if isinstance(getattr(o, "cfg", None), PruneConfig)), None)


def check_new_run(cfg: PruneConfig, args, task: str | None = None) -> None:
    """The checks a run's plugin settings need against its Ultralytics args, before anything is written.

    Args:
        cfg: The plugin's config.
        args: The run's Ultralytics args.
        task: The trainer's own task where its class fixes it (``args.task`` otherwise).

    Raises:
        PruneError: A distillation setting the run cannot honour, or a schedule that does not fit the run.
    """
    distill_model = getattr(args, "distill_model", None)  # default.yaml has it from Ultralytics 8.4.77
    check_features({"prune_distill": cfg.prune_distill, "distill_model": distill_model})
    cfg.check_run(resume=args.resume, distill_model=distill_model, task=task or args.task)
    if cfg.target is not None and not args.resume:
        new_schedule(cfg, args.epochs, args.patience, args.val)


def is_pruned(model: nn.Module) -> bool:
    """Whether a rebuild from ``model.yaml`` would lose something: pruning state, yolo-prune blocks, or any parameter
    whose shape differs from the yaml's (a one-shot pruned model folds back to Ultralytics' classes, so only the
    shapes tell)."""
    model = unwrap_model(model)
    return hasattr(model, "prune_state") or needs_yolo_prune(model) or shapes_differ(model)


def shapes_differ(model: nn.Module) -> bool:
    """Whether any parameter's shape differs from what ``model.yaml`` builds."""
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

    task_of_class: str | None = None  # the task a trainer class fixes (Ultralytics' ClassificationTrainer sets it late)

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        """The stock trainer, after the run's plugin settings are checked, with ``compile`` off for ``prune_distill``.

        The check runs before Ultralytics' ``__init__`` creates the run folder. Ultralytics turns compile off for
        ``distill_model`` in ``_setup_train`` on every rank; ``prune_distill`` wraps the model later, so it is turned
        off here, where every DDP rank (and the launcher, whose args the workers get) passes.
        """
        plugin = prune_config(_callbacks)
        if plugin is not None:
            own = {k: v for k, v in (overrides or {}).items() if k != "session"}  # to 8.4.113: HUB's, the trainer pops
            check_features(own)  # before get_cfg, which would refuse a key this release does not have yet
            check_new_run(plugin, get_cfg(cfg, own), self.task_of_class)
        super().__init__(cfg, overrides, _callbacks)
        self.prune_checked = plugin is not None  # callbacks added after construction are checked at their start
        if plugin is not None and plugin.prune_distill:
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
            state = getattr(weights, "prune_state", None) or {}
            if needs_yolo_prune(weights) or shapes_differ(weights):
                what = "training the pruned model as it is"
            elif state.get("schedule") and not state.get("done"):
                what = "continuing its prune schedule, no step has run yet: training the model as it is"
            else:
                what = "training the model as it is, with its prune_state"
            LOGGER.info(f"yolo-prune: {what} (no rebuild from model.yaml)")
        # a loaded checkpoint's parameters are frozen (Ultralytics' loader): trainable again, as a model built from
        # the yaml is, so the trainer applies its freeze policy without a warning per parameter
        for p in weights.parameters():
            p.requires_grad = True
        if hasattr(self, "set_model_names_for_load"):
            return self.set_model_names_for_load(weights)
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

    task_of_class = "classify"


TRAINERS = {
    "detect": PruneDetectionTrainer,
    "segment": PruneSegmentationTrainer,
    "pose": PrunePoseTrainer,
    "obb": PruneOBBTrainer,
    "classify": PruneClassificationTrainer,
}


