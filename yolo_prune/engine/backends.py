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
        from importlib.metadata import PackageNotFoundError, version

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
    check_installed(fmt, key, b.name if key == "prune_runtime" else fmt)
    return b


@contextmanager
def no_runtime_installs():
    """Point pip at no index while a converter runs: MNN's converter runs ``pip install aliyun-log-python-sdk`` (a
    telemetry client) when it cannot import it, and that package's ``protobuf<6`` pin breaks onnx>=1.18 in the same
    environment (seen on MNN 3.6.1). Without an index the install fails at once and the converter goes on without it."""
    saved = os.environ.get("PIP_NO_INDEX")
    os.environ["PIP_NO_INDEX"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PIP_NO_INDEX", None)
        else:
            os.environ["PIP_NO_INDEX"] = saved


# --- sessions: an export loaded on its runtime -----------------------------------------------------------------------
@dataclass
class Session:
    """An export loaded on its runtime: ``run(x)`` takes a (B, 3, H, W) float tensor in [0, 1] and returns the
    outputs as float32 arrays; ``shape`` is the input shape the graph was exported with (None where dynamic)."""

    run: Callable[[torch.Tensor], list[np.ndarray]]
    shape: list[int | None]


def _onnx(file: Path, threads: int | None, exact: bool) -> Session:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    s = ort.InferenceSession(str(file), so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32

    def run(x):
        return [o.astype(np.float32) for o in s.run(None, {inp.name: x.numpy().astype(dtype)})]

    return Session(run, [d if isinstance(d, int) else None for d in inp.shape])


def _openvino(folder: Path, threads: int | None, exact: bool) -> Session:
    import openvino as ov

    core = ov.Core()
    if threads:
        core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
    # exact: f32 execution. On CPUs with AVX512-BF16/AMX OpenVINO runs in bf16 by default (max diff ~0.04 on yolo11n),
    # which is the runtime's choice, not the export's; parity checks what the exported IR computes
    config = {"INFERENCE_PRECISION_HINT": "f32"} if exact else {"PERFORMANCE_HINT": "LATENCY"}
    xml = next(folder.glob("*.xml")) if folder.is_dir() else folder
    compiled = core.compile_model(str(xml), "CPU", config)
    request = compiled.create_infer_request()

    def run(x):
        result = request.infer({0: x.numpy()})
        return [np.asarray(result[o], dtype=np.float32) for o in compiled.outputs]

    shape = compiled.input(0).get_partial_shape()
    return Session(run, [d.get_length() if d.is_static else None for d in shape])


def _ultralytics(file: Path, fmt: str, threads: int | None) -> Session:
    """NCNN, LiteRT, ExecuTorch and MNN through Ultralytics' inference backend for the format."""
    from ultralytics.nn import backends

    cls = {"ncnn": backends.NCNNBackend, "litert": backends.LiteRTBackend,
           "executorch": backends.ExecuTorchBackend, "mnn": backends.MNNBackend}[fmt]  # fmt: skip
    b = cls(str(file), torch.device("cpu"))
    if threads and fmt == "ncnn":  # reloaded: NCNN's gemm convs keep the thread count they were loaded with
        import ncnn

        param = next(file.glob("*.param")) if file.is_dir() else file
        b.net = ncnn.Net()
        b.net.opt.use_vulkan_compute = False
        b.net.opt.num_threads = threads
        b.net.load_param(str(param))
        b.net.load_model(str(Path(param).with_suffix(".bin")))
    elif threads and fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        b.interpreter = Interpreter(str(file), num_threads=threads)
        b.interpreter.allocate_tensors()
    elif threads and fmt == "executorch":
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(threads)  # XNNPACK's one process-wide pool
    elif threads and fmt == "mnn":
        import MNN

        rt = MNN.nn.create_runtime_manager(({"precision": "normal", "backend": "CPU", "numThread": threads},))
        b.net = MNN.nn.load_module_from_file(str(file), [], [], runtime_manager=rt, rearrange=True)
    meta = b.metadata or {}
    imgsz = meta.get("imgsz") or [None, None]
    imgsz = [imgsz, imgsz] if isinstance(imgsz, int) else list(imgsz)
    dynamic = bool(meta.get("args", {}).get("dynamic"))

    def run(x):
        out = b.forward(x.contiguous())
        return [np.asarray(o.numpy() if isinstance(o, torch.Tensor) else o, dtype=np.float32) for o in out]

    batch = None if dynamic else int(meta.get("batch", 1))
    return Session(run, [batch, 3, *([None, None] if dynamic else imgsz)])


def load_session(exported: str | Path, fmt: str, threads: int | None = None, exact: bool = False) -> Session:
    """Load an export (an ONNX file, an OpenVINO / NCNN / ExecuTorch folder, a .tflite or .mnn file) on its runtime.

    Args:
        exported: What Ultralytics' exporter returned.
        fmt: Its export format.
        threads: CPU threads of the runtime (None: the runtime's own default).
        exact: Run at the precision the export holds (OpenVINO would pick bf16 on AMX CPUs); for parity.

    Raises:
        PruneError: The runtime is not installed.
    """
    check_backend(fmt)
    file = Path(exported)
    if fmt == "onnx":
        return _onnx(file, threads, exact)
    if fmt == "openvino":
        return _openvino(file, threads, exact)
    return _ultralytics(file, fmt, threads)


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
