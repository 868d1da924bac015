"""Shared fixtures. Everything runs offline on CPU: models from packaged yamls, data from the built-in generator."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["YOLO_OFFLINE"] = "1"
os.environ.setdefault("YOLO_PRUNE_CACHE", str(Path(__file__).parent / ".cache"))  # keeps test data out of ~/.cache

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of `pytest -n N`'s workers: one thread each, or N workers fight
    os.environ["OMP_NUM_THREADS"] = "1"  # (the subprocesses a test starts inherit it)
    import torch

    torch.set_num_threads(1)

# Tests that share an expensive session fixture run on one xdist worker, so it is built once (xdist_group, run with
# --dist loadgroup); the latency group also keeps the tests that time things off each other.
SHARED = {"matrix": "matrix", "shared_cache": "latency", "killed_run": "killed"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = next((g for f, g in SHARED.items() if f in getattr(item, "fixturenames", ())), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def needs(feature: str):
    """Skip where the installed Ultralytics release lacks ``feature`` (yolo_prune.support; benchmarks/compat.py runs the
    suite on such releases): the gating line itself is tested in test_support.py."""
    from yolo_prune.support import FEATURES, has

    return pytest.mark.skipif(not has(feature), reason=f"{feature} needs ultralytics>={FEATURES[feature]}")


def run_cli(*args: str, cwd: Path | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run ``yolo-prune MODE key=value ...`` as a user would, and what it printed.

    In this process by default (``cli.entrypoint(argv)`` returns the exit status; an exception that escapes it is a
    traceback and exit 1, as the console script would end): starting an interpreter per call cost seconds each.
    ``fresh=True`` runs the real console entry point in a new process.
    """
    if fresh:
        return subprocess.run(
            [sys.executable, "-m", "yolo_prune", *args], capture_output=True, text=True, cwd=cwd, timeout=600
        )
    import contextlib
    import io
    import traceback

    from ultralytics.utils import LOGGER

    from yolo_prune.cli import entrypoint

    out, err = io.StringIO(), io.StringIO()
    handlers = [h for h in LOGGER.handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.setStream(out) for h in handlers]  # Ultralytics logs to stdout
    argv, old_cwd = list(sys.argv), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entrypoint(list(args))
            except SystemExit as e:  # Ultralytics' own entrypoint exits on some input
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # noqa: BLE001  what a user would see: a traceback and exit 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(old_cwd)
        sys.argv[:] = argv
        for h, stream in zip(handlers, streams):
            h.setStream(stream)
    return subprocess.CompletedProcess(["yolo-prune", *args], code, out.getvalue(), err.getvalue())


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


FAMILIES = ("yolov8n", "yolo11n", "yolo26n")
TASKS = ("detect", "segment", "pose", "obb", "classify")
SUFFIX = {"detect": "", "segment": "-seg", "pose": "-pose", "obb": "-obb", "classify": "-cls"}
MATRIX_TRAIN = {"epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "plots": False}


def task_model(family: str, task: str):
    """``family`` x ``task`` from its yaml with the built-in data's classes (and keypoints), as training builds it."""
    from ultralytics import YOLO

    cfg = f"{family}{SUFFIX[task]}.yaml"
    yolo = YOLO(cfg)
    extra = {"data_kpt_shape": (5, 3)} if task == "pose" else {}  # built-in pose data: 5 keypoints (x, y, v)
    yolo.model = type(yolo.model)(cfg, nc=6, verbose=False, **extra)
    return yolo


@pytest.fixture(scope="session")
def matrix(tmp_path_factory) -> dict[str, dict]:
    """Every family x task cell, made once for the task, fold and stock-load tests.

    Per cell (``"yolo11n-pose"``): the unpruned model (``base``, nc=6 as the built-in data builds it) and its GFLOPs,
    a one-shot ``pruned.pt`` of it at prune=0.5 (``oneshot``, with its ``summary``), and a pruning run trained one epoch
    on the built-in data from that pruned.pt with another prune=0.5 at epoch 0 (``last``, ``best``).
    """
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    from yolo_prune import add_pruning
    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.modes.oneshot import prune_file

    root = tmp_path_factory.mktemp("matrix")
    cells = {}
    for family in FAMILIES:
        for task in TASKS:
            cell = f"{family}-{task}"
            yolo = task_model(family, task)
            src = save_checkpoint(yolo.model, root / f"{cell}.pt", {"task": task, "imgsz": 64})
            s = prune_file(src, imgsz=64, project=root / "oneshot", name=cell, prune=0.5)
            oneshot = Path(s["save_dir"]) / "weights" / "pruned.pt"
            model = add_pruning(YOLO(str(oneshot)), prune=0.5, prune_steps=1, prune_start=0)
            model.train(data="shapes-8", project=str(root / "train"), name=cell, **MATRIX_TRAIN)
            run = root / "train" / cell / "weights"
            cells[cell] = {"family": family, "task": task, "base": yolo.model, "summary": s, "oneshot": oneshot,
                           "base_flops": get_flops(yolo.model, 640), "last": run / "last.pt", "best": run / "best.pt"}
    return cells
