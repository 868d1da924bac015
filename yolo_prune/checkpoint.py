"""Loading models to prune and writing pruned ones as ordinary Ultralytics checkpoints, atomically."""

from __future__ import annotations

import io
import os
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ultralytics import YOLO, __version__

from .cfg import SUPPORTED_MODELS, PruneError


def is_distilling(model: nn.Module) -> bool:
    """Whether ``model`` (DDP-wrapped or not) is Ultralytics' distillation wrapper (``DistillationModel``)."""
    from ultralytics.utils.torch_utils import unwrap_model

    try:
        from ultralytics.nn.distill_model import DistillationModel
    except ImportError:  # Ultralytics < 8.4.77: no distillation, so no model is a wrapper
        return False
    return isinstance(unwrap_model(model), DistillationModel)


def student_of(model: nn.Module) -> nn.Module:
    """The model being trained and pruned: the student inside a distillation wrapper, else the model itself."""
    from ultralytics.utils.torch_utils import unwrap_model

    model = unwrap_model(model)
    return model.student_model if is_distilling(model) else model


def load_model(model: str | Path) -> YOLO:
    """Load ``model`` (a packaged/local yaml or a local .pt) without any download.

    A distillation checkpoint (a run's ``epoch{N}.pt`` or interrupted ``last.pt``) loads as its student.

    Raises:
        PruneError: The name is not a yaml or .pt, the file is missing, unreadable, or of an unsupported model.
    """
    model = str(model)
    suffix = Path(model).suffix.lower()
    if suffix not in {".yaml", ".yml", ".pt"}:
        raise PruneError(f"model={model!r} is invalid; accepted: a model .yaml (e.g. yolo11n.yaml) or a .pt checkpoint")
    if suffix == ".pt" and not Path(model).is_file():  # Ultralytics would try to download it
        raise PruneError(f"model: file '{model}' not found; accepted: an existing local .pt checkpoint")
    try:
        yolo = YOLO(model)
    except NotImplementedError:  # e.g. RT-DETR yamls: YOLO() has no task map for them
        raise PruneError(f"model: '{model}' is not supported; supported: {SUPPORTED_MODELS}") from None
    except FileNotFoundError:
        raise PruneError(
            f"model: '{model}' not found; accepted: a packaged yaml such as yolo11n.yaml or a local file"
        ) from None
    except Exception as e:  # torch/pickle/yaml raise many types for a corrupt file
        chain = [e]
        while chain[-1].__cause__ or chain[-1].__context__:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        gone = next((x.name for x in chain if isinstance(x, ModuleNotFoundError) and "yolo_prune" in str(x.name)), None)
        if gone:  # yolo-prune 0.1 pickled its blocks as yolo_prune.blocks (0.2: yolo_prune.engine.blocks)
            raise PruneError(
                f"model: '{model}' holds classes of an earlier yolo-prune ({gone}, moved in 0.2); accepted: a "
                f"checkpoint written by this yolo-prune, or load it with the version that wrote it and re-prune"
            ) from None
        kind = "checkpoint" if suffix == ".pt" else "model yaml"
        raise PruneError(
            f"model: '{model}' is not a readable Ultralytics {kind} ({type(e).__name__}); "
            f"accepted: a {kind} written by Ultralytics or yolo-prune"
        ) from e
    if is_distilling(yolo.model):  # a distillation run's epoch{N}.pt or interrupted last.pt holds the wrapper
        student = student_of(yolo.model)
        for k in ("args", "pt_path", "task"):  # what Ultralytics' loader set on the wrapper (args: a dict, not the
            if hasattr(yolo.model, k):  # student's live training namespace); the exporter reads them
                setattr(student, k, getattr(yolo.model, k))
        yolo.model = student
        if isinstance(yolo.ckpt, dict):  # Model.save() writes ckpt with "model" replaced: no wrapper left in "ema"
            yolo.ckpt = {**yolo.ckpt, "ema": None, "model": student}
    return yolo


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_checkpoint(model: nn.Module, path: str | Path, train_args: dict[str, Any] | None = None, **extra) -> Path:
    """Save ``model`` like Ultralytics' trainer does (FP16 whole module under ``ema``), atomically.

    Args:
        model: The (pruned) model; ``YOLO(path)`` loads it back with its pruned shapes.
        path: Where to write the checkpoint (through a temp file and a rename).
        train_args: Saved as the checkpoint's ``train_args`` (``task``, ``imgsz``...), as Ultralytics' trainer does.
        **extra: Further top-level keys that ride along (e.g. ``yolo_prune``).

    Returns:
        ``path`` as a Path.
    """
    snapshot = deepcopy(model).half().to(memory_format=torch.contiguous_format)
    if hasattr(snapshot, "criterion"):
        snapshot.criterion = None  # training-only state, as Ultralytics strips it
    kpt = (getattr(snapshot, "yaml", None) or {}).get("kpt_shape")
    if kpt and not hasattr(snapshot, "kpt_shape"):  # PoseTrainer sets it; some releases' predictors read only it
        snapshot.kpt_shape = tuple(kpt)
    if type(snapshot).__name__ == "ClassificationModel" and getattr(snapshot, "transforms", None) is None:
        from ultralytics.data.augment import classify_transforms  # as ClassificationTrainer sets them: some 8.4
        # releases (8.4.76 seen) predict with the checkpoint's own transforms only
        snapshot.transforms = classify_transforms((train_args or {}).get("imgsz") or 224)
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": None,
        "ema": snapshot,
        "updates": None,
        "optimizer": None,
        "train_args": dict(train_args or {}),
        "train_metrics": None,
        "train_results": None,
        **extra,
    }
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return atomic_write_bytes(path, buffer.getvalue())
