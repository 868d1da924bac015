"""Small converged models of the built-in ``shapes`` data, shipped so a first run prunes a trained model.

Made by ``benchmarks/bases.py --ship`` (all 150 epochs of their schedule on ``shapes-500`` at imgsz 128; see
``benchmarks/results/bases_<model>.md``).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent

MODELS = ("yolo11n-shapes.pt", "yolo26n-shapes.pt", "yolo11s-shapes.pt", "yolo26s-shapes.pt")


def resolve_model(model):
    """A shipped model's name (``yolo11n-shapes.pt``) becomes its path when no local file has that name; anything
    else is returned unchanged (Ultralytics would try to download an unknown ``.pt`` name)."""
    if isinstance(model, str) and model in MODELS and not Path(model).exists() and (ASSETS / model).is_file():
        return str(ASSETS / model)
    return model
