"""The runtimes an exported model runs on: for each, the format Ultralytics' exporter writes for it, what must be
installed, and how to load an export and run it.

ONNX Runtime and OpenVINO sessions are made here directly (a thread count, OpenVINO's precision hint). NCNN, LiteRT,
ExecuTorch and MNN run through Ultralytics' own inference backends (``ultralytics.nn.backends``), which know each
exporter's conventions (LiteRT's normalized box coordinates, NCNN's output order, MNN's metadata), with the thread
count set on the runtime underneath, since those backends fix it to the machine's cores.

Nothing is installed at run time: Ultralytics' backends and exporters would ``pip install`` a missing runtime, so the
imports are checked first (:func:`check_backend`, from :data:`yolo_prune.inputs.EXPORT_NEEDS`) and a missing one is
one line naming the extra to install.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..cfg import RUNTIME_FORMATS
from ..inputs import check_installed
from ..support import require


@dataclass(frozen=True)
class Backend:
    """One runtime: its ``prune_runtime`` name, Ultralytics' export ``format``, the precisions besides fp32
    (``quantize``) whose exports are checked to hold what was asked (:func:`precision_found`), and the distribution
    whose version a latency table is keyed by. What each needs installed is :data:`yolo_prune.inputs.EXPORT_NEEDS`."""

    name: str
    format: str
    quantize: tuple[int, ...]
    dist: str

    @property
    def version(self) -> str:
        """The runtime's version (its module's ``__version__``; onnxruntime-gpu and the like install ``onnxruntime``)."""
        import importlib
        from importlib.metadata import PackageNotFoundError, version

        module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn", "litert": "ai_edge_litert",
                  "executorch": "executorch", "mnn": "MNN"}[self.name]  # fmt: skip
        try:
            return str(importlib.import_module(module).__version__)
        except (ImportError, AttributeError):
            try:
                return version(self.dist)
            except PackageNotFoundError:
                return "?"


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("onnxruntime", "onnx", (16, 8), "onnxruntime"),
        Backend("openvino", "openvino", (16, 8), "openvino"),
        Backend("ncnn", "ncnn", (16,), "ncnn"),
        Backend("litert", "litert", (8,), "ai-edge-litert"),
        Backend("executorch", "executorch", (), "executorch"),
        Backend("mnn", "mnn", (16, 8), "MNN"),
    )
}
assert {b.name: b.format for b in BACKENDS.values()} == RUNTIME_FORMATS  # cfg names them, this module runs them
FORMATS: dict[str, Backend] = {b.format: b for b in BACKENDS.values()}  # export format -> its runtime


def check_backend(fmt: str, key: str = "format") -> Backend:
    """The runtime of export format ``fmt``, checked to be installed with the converter its export needs.

    Raises:
        PruneError: A module is missing; the line names the key, the module and the install that provides it.
    """
    b = FORMATS[fmt]
    value = b.name if key == "prune_runtime" else fmt
    if fmt not in ("onnx", "openvino"):
        require("edge runtimes", f"{key}={value}")
    check_installed(fmt, key, value)
    return b


@contextmanager
def no_runtime_installs():
    """No package installs while an exporter or backend runs: Ultralytics' ``check_requirements`` installs what it
    finds missing or too old (off: ``AUTOINSTALL``, read when it is called), and MNN's converter runs
    ``pip install aliyun-log-python-sdk`` (a telemetry client) when it cannot import it, whose ``protobuf<6`` pin
    breaks onnx>=1.18 in the same environment (seen with MNN 3.6.1), so pip and uv are pointed at no index too: the
    install fails at once and the converter goes on without it."""
    from ultralytics.utils import checks

    env = {"PIP_NO_INDEX": "1", "UV_OFFLINE": "1"}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_auto = checks.AUTOINSTALL
    os.environ.update(env)
    checks.AUTOINSTALL = False
    try:
        yield
    finally:
        checks.AUTOINSTALL = saved_auto
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def runtime_options(name: str, threads: int | None, exact: bool = False) -> dict:
    """Threads and precision one runtime runs with, the same for a whole model and for one conv of its latency table:
    ``threads`` or the default Ultralytics' backend gives it (LiteRT: Ultralytics' NUM_THREADS; MNN: half the cores;
    NCNN, ExecuTorch: their own), and with ``exact`` fp32 arithmetic (NCNN and MNN may compute in fp16)."""
    from ultralytics.utils import NUM_THREADS

    default = {"litert": NUM_THREADS, "mnn": (os.cpu_count() + 1) // 2}.get(name)
    return {"threads": threads or default, "mnn_precision": "high" if exact else "low"}


def ncnn_net(param: Path, threads: int | None, exact: bool = False):
    """An NCNN net with its options set before loading (its gemm convs keep the thread count they were loaded with)."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    if threads:
        net.opt.num_threads = threads
    if exact:
        net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.load_param(str(param))
    net.load_model(str(Path(param).with_suffix(".bin")))
    return net


def mnn_module(file: Path, threads: int, precision: str, inputs=(), outputs=()):
    """An MNN module on the CPU with ``threads`` and ``precision``, as Ultralytics' backend loads it."""
    from ultralytics.utils.files import import_execstack

    mnn = import_execstack("MNN", "_mnncengine*.so", "_tools*.so")
    config = {"precision": precision, "backend": "CPU", "numThread": threads}
    rt = mnn.nn.create_runtime_manager((config,))
    return mnn.nn.load_module_from_file(str(file), list(inputs), list(outputs), runtime_manager=rt, rearrange=True)


def reset_executorch_threads(threads: int | None) -> None:
    """ExecuTorch's XNNPACK uses one process-wide thread pool, which a loaded method holds: set it before loading.

    Always to an explicit size (None: one per core this process may use), so a table timed at ``threads=None``
    after a load at another count in the same process is not timed at that count. Resizing replaces the pool:
    methods loaded before at another count must not run again (every caller loads what it runs after resetting).
    """
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # a cpuset's
    _unsafe_reset_threadpool(threads or cores or 1)


# --- sessions: an export loaded on its runtime -----------------------------------------------------------------------
@dataclass
class Session:
    """An export loaded on its runtime: ``run(x)`` takes a (B, 3, H, W) float tensor in [0, 1] and returns the
    outputs as float32 arrays; ``shape`` is the input shape the graph was exported with (None where dynamic)."""

    run: Callable[[torch.Tensor], list[np.ndarray]]
    shape: list[int | None]


def onnx_session(
    model: bytes | Path, fmt: str, threads: int | None = None, exact: bool = False, timing: bool = False
) -> Session:
    """An ONNX model (bytes or file; for ``fmt="openvino"`` also an export folder or .xml) on ONNX Runtime or
    OpenVINO's CPU plugin. ``exact``: OpenVINO in f32 (on CPUs with AVX512-BF16/AMX it runs bf16 by default, max diff
    ~0.04 on yolo11n: the runtime's choice, not the export's; parity checks what the exported graph computes).
    ``timing``: ONNX Runtime's pool threads flush denormals (see :func:`~yolo_prune.engine.runtime.flushed`)."""
    if fmt == "onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        if timing:
            so.add_session_config_entry("session.set_denormal_as_zero", "1")
        s = ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                 providers=["CPUExecutionProvider"])  # fmt: skip
        inp = s.get_inputs()[0]
        dtype = np.float16 if "float16" in inp.type else np.float32

        def run(x):
            out = s.run(None, {inp.name: x.numpy().astype(dtype, copy=False)})
            return [o.astype(np.float32, copy=False) for o in out]

        return Session(run, [d if isinstance(d, int) else None for d in inp.shape])
    import openvino as ov

    core = ov.Core()
    if threads:
        core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
    if isinstance(model, bytes):
        graph = core.read_model(model=model)
    else:
        graph = core.read_model(str(next(Path(model).glob("*.xml")) if Path(model).is_dir() else model))
    config = {"INFERENCE_PRECISION_HINT": "f32"} if exact else {"PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(graph, "CPU", config)
    request = compiled.create_infer_request()

    def run(x):
        result = request.infer({0: x.numpy()})
        return [np.asarray(result[o], dtype=np.float32) for o in compiled.outputs]

    shape = compiled.input(0).get_partial_shape()
    return Session(run, [d.get_length() if d.is_static else None for d in shape])


def _ultralytics(file: Path, fmt: str, threads: int | None, exact: bool) -> Session:
    """NCNN, LiteRT, ExecuTorch and MNN through Ultralytics' inference backend for the format, with the runtime
    underneath rebuilt on :func:`runtime_options` (the backends fix threads and precision themselves)."""
    from ultralytics.nn import backends

    opts = runtime_options(fmt, threads, exact)
    cls = {"ncnn": backends.NCNNBackend, "litert": backends.LiteRTBackend,
           "executorch": backends.ExecuTorchBackend, "mnn": backends.MNNBackend}[fmt]  # fmt: skip
    if fmt == "executorch":
        reset_executorch_threads(opts["threads"])
    with no_runtime_installs():
        b = cls(str(file), torch.device("cpu"))
    if fmt == "ncnn":
        b.net = ncnn_net(next(file.glob("*.param")) if file.is_dir() else file, opts["threads"], exact)
    elif fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        b.interpreter = Interpreter(str(file), num_threads=opts["threads"])
        b.interpreter.allocate_tensors()
    elif fmt == "mnn":
        b.net = mnn_module(file, opts["threads"], opts["mnn_precision"])
    meta = b.metadata or {}
    imgsz = meta.get("imgsz") or [None, None]
    imgsz = [imgsz, imgsz] if isinstance(imgsz, int) else list(imgsz)
    dynamic = bool(meta.get("args", {}).get("dynamic"))

    def run(x):
        out = b.forward(x.contiguous())
        return [np.asarray(o.numpy() if isinstance(o, torch.Tensor) else o, dtype=np.float32) for o in out]

    batch = None if dynamic else int(meta.get("batch", 1))
    return Session(run, [batch, 3, *([None, None] if dynamic else imgsz)])


def load_session(
    exported: str | Path, fmt: str, threads: int | None = None, exact: bool = False, timing: bool = False
) -> Session:
    """Load an export (an ONNX file, an OpenVINO / NCNN / ExecuTorch folder, a .tflite or .mnn file) on its runtime.

    Args:
        exported: What Ultralytics' exporter returned.
        fmt: Its export format.
        threads: CPU threads of the runtime (None: the runtime's own default).
        exact: Run at the precision the export holds (OpenVINO would pick bf16 on AMX CPUs); for parity.
        timing: For timing: ONNX Runtime's pool threads flush denormals, as the calling thread does while timing.

    Raises:
        PruneError: The runtime is not installed.
    """
    check_backend(fmt)
    file = Path(exported)
    if fmt in ("onnx", "openvino"):
        return onnx_session(file, fmt, threads, exact, timing)
    return _ultralytics(file, fmt, threads, exact)


# --- what an export holds --------------------------------------------------------------------------------------------
NCNN_FP16_TAG = 0x01306B47  # the tag ncnn's model writer puts before every fp16 weight blob (ncnn/src/modelbin.cpp)


def precision_found(exported: str | Path, fmt: str) -> set[int]:
    """Precisions the exported graph really holds: 8 (quantize/dequantize, fake-quantize ops or int8 tensors), 16 (fp16
    weights)."""
    found: set[int] = set()
    if fmt == "onnx":
        import onnx

        g = onnx.load(str(exported)).graph
        ops = {n.op_type for n in g.node}
        if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "DynamicQuantizeLinear"}:
            found.add(8)
        if any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer):
            found.add(16)
    elif fmt == "openvino":
        import openvino as ov

        ops = ov.Core().read_model(str(next(Path(exported).glob("*.xml")))).get_ops()
        names = {op.get_type_name() for op in ops}
        if names & {"FakeQuantize", "FakeConvert"}:
            found.add(8)
        if any(op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f16 for op in ops):
            found.add(16)
    elif fmt == "ncnn":
        words = np.frombuffer(next(Path(exported).glob("*.bin")).read_bytes(), dtype="<u4")
        if np.count_nonzero(words == NCNN_FP16_TAG) >= 2:
            found.add(16)
    elif fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        dtypes = {np.dtype(t["dtype"]) for t in Interpreter(str(exported)).get_tensor_details()}
        if dtypes & {np.dtype(np.int8), np.dtype(np.int16)}:
            found.add(8)
        if np.dtype(np.float16) in dtypes:
            found.add(16)
    elif fmt == "mnn":
        found |= _mnn_precisions(Path(exported))
    return found


def _mnn_precisions(file: Path) -> set[int]:
    """MNN keeps fp16 (``--fp16``) and int8 (``--weightQuantBits 8``) weights packed inside its op parameters, with no
    type a reader can list; Ultralytics converts from an fp32 ONNX export it leaves beside the .mnn, so the size
    ratio tells: measured 1.00 fp32, 0.50 fp16, 0.26 int8 on yolo11n."""
    onnx_file = file.with_suffix(".onnx")
    if not onnx_file.is_file():
        return set()
    ratio = file.stat().st_size / onnx_file.stat().st_size
    return {8} if ratio < 0.35 else {16} if ratio < 0.7 else set()
