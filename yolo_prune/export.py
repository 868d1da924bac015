"""Export through Ultralytics' exporter, then prove the exported model computes what PyTorch does.

After every export the exported file is run with its own runtime (ONNX Runtime for ONNX, OpenVINO for OpenVINO) on the
same input as the PyTorch model, configured the way the exporter configured it (head in export mode, the YOLO26
one-to-one head when ``nms=False``). The parity figure is the max abs difference of the outputs with box coordinates
divided by ``imgsz``, so boxes and scores share one scale; over the tolerance, the export fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics import YOLO
from ultralytics.utils import LOGGER

from .cfg import PruneError
from .datasets import resolve_data

# Max abs difference allowed, by precision (``quantize``). fp16 keeps 11 significant bits; its worst anchor moved by
# 0.045 of the image on a BN-calibrated random model, hence 0.1. INT8 (static, calibrated)
# is reported but not enforced: an element-wise bound over every anchor is not a meaningful INT8 criterion (on an
# untrained model a few anchors' boxes move by half the image), and a detection-level one is not calibrated yet.
TOLERANCE: dict[int, float | None] = {32: 1e-3, 16: 0.1, 8: None}
RUNTIMES = {"onnx", "openvino"}  # formats whose parity is checked here (TensorRT is not installable on these machines)
CALIBRATION_DATA = "shapes-256"  # built-in data for INT8 calibration when no data= is given


class ParityError(RuntimeError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


def _reference_model(weights: str | Path, nms: bool | None):
    model = YOLO(str(weights)).model.float().eval()
    if hasattr(model, "end2end"):
        model.end2end = nms is False  # as Exporter does: the NMS-free one-to-one head only with nms=False
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True  # heads return the single tensor that exported graphs return
    return model


def torch_reference(weights: str | Path, x: torch.Tensor, nms: bool | None = None) -> np.ndarray:
    """Output of the checkpoint as the exporter sees it (fp32, eval, head in export mode), for input ``x``."""
    model = _reference_model(weights, nms)
    head = model.model[-1]
    if hasattr(head, "max_det"):  # the exporter clamps top-k to the anchors available at this size
        head.max_det = min(head.max_det, sum(int(x.shape[-1] / s) ** 2 for s in model.stride.tolist()))
    with torch.no_grad():
        y = model(x)
    return (y[0] if isinstance(y, (tuple, list)) else y).numpy()


def onnx_outputs(onnx_file: str | Path, x: torch.Tensor) -> np.ndarray:
    """First output of an ONNX model under ONNX Runtime (CPU) for input ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    return session.run(None, {inp.name: x.numpy().astype(dtype)})[0].astype(np.float32)


def openvino_outputs(model_dir: str | Path, x: torch.Tensor) -> np.ndarray:
    """First output of an OpenVINO export folder (CPU plugin) for input ``x``."""
    import openvino as ov

    xml = next(Path(model_dir).glob("*.xml"))
    compiled = ov.Core().compile_model(str(xml), "CPU")
    return np.asarray(compiled(x.numpy())[0], dtype=np.float32)


def _normalised(y: np.ndarray, imgsz: int) -> np.ndarray:
    y = y.copy()
    if y.shape[-1] == 6:  # NMS-free (B, max_det, 6): x1 y1 x2 y2 score class
        y[..., :4] /= imgsz
    else:  # (B, 4 + nc, anchors): boxes then class scores
        y[:, :4] /= imgsz
    return y


def _max_diff(ref: np.ndarray, out: np.ndarray, end2end: bool) -> float:
    """Max abs difference; NMS-free detections are compared as sets, since near-tied scores may swap top-k places."""
    if not end2end:
        return float(np.abs(ref - out).max())
    worst = 0.0
    for r, o in zip(ref, out):  # per image: each row against its closest counterpart
        pair = np.abs(r[:, None, :] - o[None, :, :]).max(-1)
        worst = max(worst, float(pair.min(1).max()), float(pair.min(0).max()))
    return worst


def parity(weights: str | Path, exported: str | Path, fmt: str, imgsz: int, nms: bool | None = None) -> float:
    """Max abs difference between the checkpoint and its export on one random image (boxes divided by imgsz)."""
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    ref = torch_reference(weights, x, nms)
    out = onnx_outputs(exported, x) if fmt == "onnx" else openvino_outputs(exported, x)
    if ref.shape != out.shape:
        raise ParityError(f"output shapes differ: PyTorch {ref.shape} vs {fmt} {out.shape}")
    end2end = ref.ndim == 3 and ref.shape[-1] == 6 and nms is False
    return _max_diff(_normalised(ref, imgsz), _normalised(out, imgsz), end2end)


def onnx_parity(weights: str | Path, onnx_file: str | Path, imgsz: int = 640) -> float:
    """Parity of an fp32 ONNX export (see :func:`parity`)."""
    return parity(weights, onnx_file, "onnx", imgsz)


def export(weights: str | Path, format: str = "onnx", **kwargs: Any) -> dict[str, Any]:
    """Export ``weights`` with Ultralytics' exporter and check parity; returns file, precision, diff and tolerance.

    ``kwargs`` are Ultralytics export keys (``imgsz``, ``dynamic``, ``simplify``, ``nms``, ``quantize``, ``data``...).
    INT8 calibrates on ``data``, the built-in dataset by default. Raises ParityError over the tolerance.
    """
    quantize = kwargs.get("quantize") or 32
    if quantize not in TOLERANCE:
        raise PruneError(f"quantize={quantize!r} is invalid here; accepted: 32, 16, 8")
    if quantize == 8:
        kwargs["data"] = resolve_data(kwargs.get("data") or CALIBRATION_DATA)
    elif kwargs.get("data"):
        kwargs["data"] = resolve_data(kwargs["data"])
    imgsz = kwargs.get("imgsz") or 640
    file = YOLO(str(weights)).export(format=format, **kwargs)
    result = {"file": str(file), "format": format, "quantize": quantize, "max_abs_diff": None, "tolerance": None}
    if format not in RUNTIMES or kwargs.get("nms"):
        LOGGER.info(f"yolo-prune: no parity check for format={format}{' with nms=True' if kwargs.get('nms') else ''}")
        return result
    diff = parity(weights, file, format, imgsz if isinstance(imgsz, int) else max(imgsz), kwargs.get("nms"))
    tol = TOLERANCE[quantize]
    result.update(max_abs_diff=diff, tolerance=tol)
    verdict = "reported only (INT8)" if tol is None else "ok" if diff <= tol else "FAILED"
    LOGGER.info(f"yolo-prune: {format} parity vs PyTorch: max abs diff {diff:.3g} (tolerance {tol}) {verdict}")
    if tol is not None and diff > tol:
        raise ParityError(
            f"{format} export of {weights} differs from PyTorch by {diff:.3g} > {tol:g} "
            f"(quantize={quantize}); the exported file is {file}"
        )
    return result
