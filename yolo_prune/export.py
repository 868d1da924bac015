"""Checking exported models against PyTorch: same input, max abs difference of the raw outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ultralytics import YOLO


def torch_reference(weights: str | Path, x: torch.Tensor) -> np.ndarray:
    """Output of the checkpoint as the exporter sees it (fp32, eval, head in export mode), for input ``x``."""
    model = YOLO(str(weights)).model.float().eval()
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True  # heads return the single tensor that exported graphs return
    with torch.no_grad():
        y = model(x)
    return (y[0] if isinstance(y, (tuple, list)) else y).numpy()


def onnx_outputs(onnx_file: str | Path, x: torch.Tensor) -> np.ndarray:
    """First output of an ONNX model under ONNX Runtime (CPU) for input ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def onnx_parity(weights: str | Path, onnx_file: str | Path, imgsz: int = 640, seed: int = 0) -> float:
    """Max abs difference between the checkpoint and its ONNX export on the same random image batch of 1."""
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(seed))
    ref, out = torch_reference(weights, x), onnx_outputs(onnx_file, x)
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: PyTorch {ref.shape} vs ONNX {out.shape}")
    return float(np.abs(ref - out).max())
