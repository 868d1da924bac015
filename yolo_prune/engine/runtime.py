"""Runtimes and timing: where latency is measured, and how, so a load change on a shared machine hits every model alike.

A :class:`Runtime` names the runtime (ONNX Runtime, OpenVINO, PyTorch), its device and threads, and the input batch and
size. Runners are callables doing one inference; :func:`time_interleaved` times several in alternation, which is how
every speed-up yolo-prune reports is measured (the latency table, the closed loop of ``prune_latency``, and
``yolo-prune benchmark``). Whole models run as deployed: exported by Ultralytics' exporter (:func:`model_runner`).

Timing flushes denormal floats to zero on the calling thread (:func:`flushed`): with them, one graph with two sets of
weights timed 0.66-0.69 and 0.85-0.90 of its base on ONNX Runtime at 1 thread (``benchmarks/results/denormals.md``),
so a ratio measured the weights as much as the architecture.
"""

from __future__ import annotations

import copy
import functools
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ultralytics.utils import LOGGER

from ..cfg import RUNTIME_FORMATS, PruneError
from ..checkpoint import save_checkpoint
from .backends import check_backend, load_session, no_runtime_installs, onnx_session
from .blocks import fold_model


@dataclass(frozen=True)
class Runtime:
    """Where latency is measured: the runtime, its device and thread count, and the input batch and size."""

    name: str = "onnxruntime"
    device: str = "cpu"
    threads: int | None = None
    batch: int = 1
    imgsz: int = 640

    @property
    def key(self) -> dict[str, Any]:
        return {"runtime": self.name, "device": self.device, "threads": self.threads, "batch": self.batch}


def check_runtime(name: str, device: str | None = None) -> str:
    """Check that runtime ``name`` (a valid ``prune_runtime``, see :mod:`yolo_prune.cfg`) can run here on ``device``;
    returns the device to time on.

    Raises:
        PruneError: The runtime (or the converter its export needs) is not installed, or the device does not exist
            or does not fit the runtime.
    """
    device = str(device if device is not None else ("0" if name == "torch" else "cpu"))
    if name in RUNTIME_FORMATS:
        check_backend(RUNTIME_FORMATS[name], key="prune_runtime")
        if device != "cpu":
            raise PruneError(f"device={device} is invalid with prune_runtime={name}; accepted: device=cpu")
    if name == "torch" and device != "cpu" and not torch.cuda.is_available():
        raise PruneError(
            f"prune_runtime=torch device={device} needs a CUDA GPU and none is available; accepted: device=cpu "
            f"(times PyTorch fp32 on the CPU), or prune_runtime={'|'.join(RUNTIME_FORMATS)}"
        )
    return device


# --- timing ---------------------------------------------------------------------------------------------------------
def cpu_timed(device: str = "cpu", threads: int | None = None) -> bool:
    """Whether a latency is read as the calling thread's CPU time rather than on the wall clock: one thread on the
    CPU (not on Windows, whose CPU clocks step every 15.6 ms).

    At one thread every runtime timed here (ONNX Runtime, OpenVINO, PyTorch, NCNN, LiteRT, ExecuTorch, MNN) computes
    on the calling thread, so on an idle machine its CPU time is its wall time (within 0.3% for each, a 64-channel
    conv at 48 px), while on a shared one it leaves out the time other processes held the core: with four busy
    processes on 2 cores a yolo11n at 192 px read 9.0 ms of wall time and 5.0 of CPU time (4.7 idle). Wall time
    there made the whole model look slower than its convs timed alone (short calls fit between the other
    processes), so a table's fixed cost tripled and reachable ``prune_latency`` targets were refused. The thread's
    clock, not the process's, so other threads of the process (a trainer's, OpenMP workers still spinning) do not
    count. With several threads the latency is the wall time; the load it carries is what interleaving evens out.
    """
    return device == "cpu" and threads == 1 and sys.platform != "win32"


def clock_name(device: str = "cpu", threads: int | None = None) -> str:
    """``cpu`` or ``wall``: the clock :func:`cpu_timed` picks, as results files name it."""
    return "cpu" if cpu_timed(device, threads) else "wall"


OFF_THREAD = 0.2  # thread CPU time under this share of the wall time: the runner computes on another thread


def _clocked(times: list[tuple[float, float]], cpu: bool) -> tuple[list[float], str]:
    """The ms a runner's calls took, from (thread CPU, wall) pairs, and the clock read: CPU time where ``cpu``, unless
    the calls ran elsewhere (their thread was idle), where the wall clock is the only one that saw them."""
    if cpu and np.median([c for c, _ in times]) >= OFF_THREAD * np.median([w for _, w in times]):
        return [c for c, _ in times], "cpu"
    if cpu:
        _warn_off_thread()
    return [w for _, w in times], "wall"


@functools.cache
def _warn_off_thread() -> None:  # once a process: a table has hundreds of runners
    LOGGER.warning("yolo-prune: a runtime computed off the calling thread at 1 thread; it is timed on the wall clock")


def _call(fn: Callable[[], Any]) -> tuple[float, float]:
    """One call of ``fn``: (thread CPU ms, wall ms)."""
    c0, t0 = time.thread_time(), time.perf_counter()
    fn()
    t1, c1 = time.perf_counter(), time.thread_time()
    return (c1 - c0) * 1000, (t1 - t0) * 1000


@contextmanager
def flushed() -> Iterator[None]:
    """Denormal floats flushed to zero on the calling thread (``torch.set_flush_denormal``: x86 FTZ/DAZ, Arm FZ), where
    ONNX Runtime and PyTorch compute at 1 thread; ONNX Runtime's pool threads get ``session.set_denormal_as_zero``.
    Off on exit (PyTorch's default), so training after a timing computes as before: also undoing what ONNX Runtime's
    option does to the thread that creates the first such session."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _median_ms(
    fn: Callable[[], Any], warmup: int = 2, runs: int = 15, budget_s: float = 0.25, cpu: bool = False
) -> float:
    """Median ms of up to ``runs`` calls after ``warmup`` (thread CPU time where ``cpu``: :func:`cpu_timed`), stopping
    early once ``budget_s`` of wall time is spent."""
    with flushed():
        for _ in range(warmup):
            fn()
        t, start = [], time.perf_counter()
        while len(t) < runs and (len(t) < 3 or time.perf_counter() - start < budget_s):
            t.append(_call(fn))
    return float(np.median(_clocked(t, cpu)[0]))


def onnx_runner(model: bytes | str, rt: Runtime) -> Callable[[], Any]:
    """A callable running one inference of an ONNX model (bytes or path) on ``rt`` (ONNX Runtime or OpenVINO), on a
    random input of the graph's shape (``rt.batch`` where the batch is dynamic)."""
    session = onnx_session(model, RUNTIME_FORMATS[rt.name], rt.threads, timing=True)
    x = torch.rand(*[d or rt.batch for d in session.shape])
    return lambda: session.run(x)


def torch_runner(module: nn.Module, shape: tuple[int, ...], rt: Runtime) -> Callable[[], Any]:
    """A callable running ``module`` on ``rt``'s device (CUDA fp16, synchronized; fp32 on the CPU)."""
    cuda = rt.device != "cpu"
    dev = torch.device(f"cuda:{rt.device}" if cuda and rt.device.isdigit() else rt.device)
    dtype = torch.half if cuda else torch.float32
    module = module.to(dev, dtype).eval()
    x = torch.rand(*shape, device=dev, dtype=dtype)

    def run():
        if cuda or not rt.threads:
            with torch.inference_mode():
                module(x)
            if cuda:
                torch.cuda.synchronize(dev)
            return
        saved = torch.get_num_threads()  # prune_threads on the CPU: the threads the table is keyed by
        torch.set_num_threads(rt.threads)
        try:
            with torch.inference_mode():
                module(x)
        finally:
            torch.set_num_threads(saved)

    return run


def time_interleaved(fns: dict[str, Any], runs: int, warmup: int = 10, cpu: bool = False) -> dict[str, dict]:
    """Median and p90 latency in ms of each callable, timed in alternation (a, b, a, b, ...), so a load change on a
    shared machine slows every model alike instead of skewing their ratio.

    Args:
        fns: Name -> a callable running one inference.
        runs: Timed calls of each.
        warmup: Untimed calls of each first.
        cpu: Read the calling thread's CPU time (:func:`cpu_timed`: one thread on the CPU), not the wall clock. The
            p90 then leaves out the waits a shared machine adds too.

    Denormals are flushed while timing (:func:`flushed`).

    Returns:
        Name -> ``{"median_ms": ..., "p90_ms": ..., "clock": "cpu" | "wall"}``.
    """
    t: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    with flushed():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for _ in range(runs):
            for k, fn in fns.items():
                t[k].append(_call(fn))
    out = {}
    for k, v in t.items():
        ms, name = _clocked(v, cpu)
        out[k] = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "clock": name}
    return out


# --- the whole model -------------------------------------------------------------------------------------------------
def model_runner(model: nn.Module, rt: Runtime, workdir: str | Path) -> Callable[[], Any]:
    """A callable running the whole (folded) model as deployed: Ultralytics' exporter for ONNX Runtime / OpenVINO,
    the fused module for torch."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import guess_model_task

    net = copy.deepcopy(model).float().eval()
    fold_model(net)
    shape = (rt.batch, 3, rt.imgsz, rt.imgsz)
    if rt.name == "torch":
        return torch_runner(net.fuse() if hasattr(net, "fuse") else net, shape, rt)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    task = getattr(net, "task", None) or guess_model_task(net)
    pt = save_checkpoint(net, workdir / f"m{len(list(workdir.iterdir()))}.pt", {"task": task, "imgsz": rt.imgsz})
    fmt = RUNTIME_FORMATS[rt.name]
    with no_runtime_installs():
        file = YOLO(str(pt)).export(format=fmt, imgsz=rt.imgsz, batch=rt.batch, verbose=False)
    return exported_runner(file, fmt, rt.threads, rt.imgsz, rt.batch)


def exported_runner(
    exported: str | Path, fmt: str, threads: int | None, imgsz: int = 640, batch: int = 1
) -> Callable[[], Any]:
    """A callable running one inference of an export on its runtime, on a random input of the graph's own shape.

    Args:
        exported: What Ultralytics' exporter returned (a file or a folder).
        fmt: Its format (``onnx``, ``openvino``, ``ncnn``, ``litert``, ``executorch``, ``mnn``).
        threads: Runtime threads (None: the runtime's default).
        imgsz: Input size where the graph's is dynamic.
        batch: Batch where the graph's is dynamic.
    """
    session = load_session(exported, fmt, threads, timing=True)
    b, c, h, w = (list(session.shape) + [None] * 4)[:4]
    x = torch.rand(b or batch, c or 3, h or imgsz, w or imgsz)
    return lambda: session.run(x)


def model_runners(
    models: dict[str, nn.Module], rt: Runtime, runners: dict[str, Callable] | None = None
) -> dict[str, Callable]:
    """``runners`` (a new dict if None) with a :func:`model_runner` added for each model it lacks, exported quietly
    (an export logs a page per model). The runners outlive the export folder: they hold their sessions."""
    runners = {} if runners is None else runners
    level = LOGGER.level
    LOGGER.setLevel("WARNING")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k, m in models.items():
                if k not in runners:
                    runners[k] = model_runner(m, rt, tmp)
    finally:
        LOGGER.setLevel(level)
    return runners


def measure_models(
    models: dict[str, nn.Module], rt: Runtime, runs: int = 50, runners: dict[str, Callable] | None = None
) -> dict[str, float]:
    """Median milliseconds of each whole model on ``rt``, timed in alternation (so load changes hit all alike).

    ``runners`` holds callables already built (by :func:`model_runners`), e.g. the unpruned model's across re-aims;
    the ones built here are added to it.
    """
    runners = model_runners(models, rt, runners)
    fns = {k: runners[k] for k in models}
    return {k: v["median_ms"] for k, v in time_interleaved(fns, runs, cpu=cpu_timed(rt.device, rt.threads)).items()}

