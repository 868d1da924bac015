"""Shared fixtures. Everything runs offline on CPU: models from packaged yamls, data from the built-in generator."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["YOLO_OFFLINE"] = "1"
os.environ.setdefault("YOLO_PRUNE_CACHE", str(Path(__file__).parent / ".cache"))  # keeps test data out of ~/.cache


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``yolo-prune`` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "yolo_prune", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="session")
def tiny_data() -> str:
    """Yaml of the built-in dataset with 8 train / 2 val images."""
    from yolo_prune.datasets import builtin_dataset

    return builtin_dataset("shapes-8")


@pytest.fixture(scope="session")
def trained_pt(tmp_path_factory, tiny_data) -> Path:
    """A really trained checkpoint (yolo11n, 1 epoch, imgsz 64) as Ultralytics writes it."""
    from ultralytics import YOLO

    project = tmp_path_factory.mktemp("train")
    YOLO("yolo11n.yaml").train(
        data=tiny_data, epochs=1, imgsz=64, batch=4, workers=0, project=str(project), name="t", plots=False, val=False
    )
    return project / "t" / "weights" / "last.pt"


@pytest.fixture()
def log_lines():
    """Messages Ultralytics' LOGGER (which yolo-prune logs through) emits during the test, as 'LEVEL message'."""
    from ultralytics.utils import LOGGER

    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: lines.append(f"{r.levelname} {r.getMessage()}")
    LOGGER.addHandler(handler)
    yield lines
    LOGGER.removeHandler(handler)


NO_PLUGIN = """
import sys
sys.modules["yolo_prune"] = None  # 'import yolo_prune' raises ImportError: a machine with plain ultralytics
"""


def run_without_plugin(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh process where yolo-prune cannot be imported and ULTRALYTICS_SAFE_LOAD=1."""
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1", "YOLO_AUTOINSTALL": "false"}
    return subprocess.run(
        [sys.executable, "-c", NO_PLUGIN + code, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
