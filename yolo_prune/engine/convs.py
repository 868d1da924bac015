"""One conv timed alone on each runtime: the latency table's measurements (:mod:`yolo_prune.engine.latency`).

A conv signature is ``(cin, cout, k, s, p, groups, dilation, h, w, act, batch)``. The model for one conv is built the
cheapest way each runtime allows, since a table needs hundreds of them:

- ONNX Runtime, OpenVINO: an ONNX graph written with ``onnx.helper``;
- NCNN: a ``.param`` / ``.bin`` pair written directly (the text format pnnx writes, weights after a 4-byte type tag);
- MNN: that ONNX graph through MNN's converter (a few ms each);
- LiteRT, ExecuTorch: no cheap path exists, so :data:`CHUNK` convs are converted at once (litert-torch signatures,
  ExecuTorch methods of one program) and each is run alone by its name;
- PyTorch: the module itself.

Each runs with the threads of the :class:`~yolo_prune.engine.runtime.Runtime`, the same runtime options the whole
model gets in :func:`~yolo_prune.engine.backends.load_session`.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .backends import no_runtime_installs
from .runtime import Runtime, _median_ms, onnx_runner, torch_runner

CHUNK = 32  # convs per LiteRT / ExecuTorch conversion (one conversion costs seconds, each conv in it ~0.1 s more)
TINY = (1, 1, 1, 1, 0, 1, 1, 1, 1, False, 1)  # a conv with next to no work: what one runtime call costs


def _conv_onnx(sig: tuple, opset: int = 17) -> bytes:
    """A one-conv ONNX model (conv + bias, SiLU if ``act``) of signature ``sig``, built directly with onnx.helper:
    exporting a torch module per shape would cost more than timing it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cin, cout, k, s, p, g, d, h, w, act, batch = sig
    rng = np.random.default_rng(0)
    wt = numpy_helper.from_array(rng.standard_normal((cout, cin // g, k, k)).astype(np.float32) * 0.05, "W")
    b = numpy_helper.from_array(np.zeros(cout, np.float32), "B")
    nodes = [
        helper.make_node(
            "Conv", ["x", "W", "B"], ["c"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=g, dilations=[d, d]
        )
    ]
    if act:
        nodes += [helper.make_node("Sigmoid", ["c"], ["sg"]), helper.make_node("Mul", ["c", "sg"], ["y"])]
    else:
        nodes += [helper.make_node("Identity", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [wt, b],
    )
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


class _Conv(nn.Module):
    """One conv (+ SiLU), named as converters need (pnnx and litert-torch reject numeric module names)."""

    def __init__(self, sig: tuple):
        super().__init__()
        cin, cout, k, s, p, g, d, *_, act, _b = sig
        self.conv = nn.Conv2d(cin, cout, k, s, p, dilation=d, groups=g)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.conv(x))


def _input(sig: tuple) -> torch.Tensor:
    cin, h, w, batch = sig[0], sig[7], sig[8], sig[10]
    return torch.rand(batch, cin, h, w)


def _ncnn_runner(sig: tuple, rt: Runtime, folder: Path) -> Callable[[], Any]:
    import ncnn

    cin, cout, k, s, p, g, d, h, w, act, _batch = sig
    count = cout * (cin // g) * k * k
    layer = "ConvolutionDepthWise" if g > 1 else "Convolution"
    lines = ["7767517", f"{3 if act else 2} {3 if act else 2}", f"Input in 0 1 x 0={w} 1={h} 2={cin}",
             f"{layer} conv 1 1 x {'c' if act else 'y'} 0={cout} 1={k} 2={d} 3={s} 4={p} 5=1 6={count}"
             + (f" 7={g}" if g > 1 else "")]  # fmt: skip
    if act:
        lines.append("Swish act 1 1 c y")
    param, weights = folder / "conv.param", folder / "conv.bin"
    param.write_text("\n".join(lines) + "\n")
    wt = np.random.default_rng(0).standard_normal(count).astype(np.float32) * 0.05
    weights.write_bytes(struct.pack("<I", 0) + wt.tobytes() + np.zeros(cout, np.float32).tobytes())  # tag 0: fp32
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    if rt.threads:
        net.opt.num_threads = rt.threads
    net.load_param(str(param))
    net.load_model(str(weights))
    x = ncnn.Mat(_input(sig)[0].numpy())

    def run():
        with net.create_extractor() as ex:
            ex.input("x", x)
            ex.extract("y")

    run.net = net  # keeps the net alive with the callable
    return run


def _mnn_runner(sig: tuple, rt: Runtime, folder: Path) -> Callable[[], Any]:
    from ultralytics.utils.files import import_execstack

    mnn = import_execstack("MNN", "_mnncengine*.so", "_tools*.so")  # as Ultralytics loads it
    with no_runtime_installs():
        from MNN.tools import mnnconvert
    src, dst = folder / "conv.onnx", folder / "conv.mnn"
    src.write_bytes(_conv_onnx(sig))
    mnnconvert.convert(["", "-f", "ONNX", "--modelFile", str(src), "--MNNModel", str(dst), "--bizCode", "conv"])
    config = {"precision": "normal", "backend": "CPU", "numThread": rt.threads or 4}
    net = mnn.nn.load_module_from_file(str(dst), [], [], runtime_manager=mnn.nn.create_runtime_manager((config,)))
    x = _input(sig)
    var = mnn.expr.const(x.data_ptr(), x.shape)  # points into x's memory

    def run():
        for y in net.onForward([var]):
            y.read()

    run.keep = (net, x)  # alive as long as the callable
    return run


def _litert_runners(sigs: list[tuple], rt: Runtime, folder: Path) -> dict[tuple, Callable[[], Any]]:
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    names = {f"c{i}": sig for i, sig in enumerate(sigs)}
    chain = None
    for name, sig in names.items():
        chain = (litert_torch if chain is None else chain).signature(name, _Conv(sig).eval(), (_input(sig),))
    file = folder / "convs.tflite"
    chain.convert().export(str(file))
    interpreter = Interpreter(str(file), **({"num_threads": rt.threads} if rt.threads else {}))
    out = {}
    for name, sig in names.items():
        runner = interpreter.get_signature_runner(name)
        key = next(iter(runner.get_input_details()))
        x = _input(sig).numpy()
        out[sig] = lambda r=runner, k=key, x=x: r(**{k: x})
    return out


def _executorch_runners(sigs: list[tuple], rt: Runtime, folder: Path) -> dict[tuple, Callable[[], Any]]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime as ETRuntime

    names = {f"c{i}": sig for i, sig in enumerate(sigs)}
    programs = {n: torch.export.export(_Conv(sig).eval(), (_input(sig),)) for n, sig in names.items()}
    file = folder / "convs.pte"
    file.write_bytes(to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    if rt.threads:
        _unsafe_reset_threadpool(rt.threads)
    program = ETRuntime.get().load_program(str(file))
    out = {}
    for name, sig in names.items():
        method, x = program.load_method(name), _input(sig)

        def run(m=method, x=x):
            return m.execute([x])

        out[sig] = run
        out[sig].program = program  # alive as long as its methods' callables
    return out


def time_convs(sigs: Iterable[tuple], rt: Runtime) -> Iterator[tuple[tuple, float]]:
    """``(signature, median ms)`` of each conv run alone on ``rt``, one at a time as they are timed (for progress)."""
    sigs = list(sigs)
    with tempfile.TemporaryDirectory(prefix="yolo-prune-conv-") as tmp:
        folder = Path(tmp)
        if rt.name in ("litert", "executorch"):
            build = _litert_runners if rt.name == "litert" else _executorch_runners
            for i in range(0, len(sigs), CHUNK):
                runners = build(sigs[i : i + CHUNK], rt, folder)
                for sig in sigs[i : i + CHUNK]:
                    yield sig, _median_ms(runners[sig])
            return
        for sig in sigs:
            if rt.name == "torch":
                fn = torch_runner(_Conv(sig), tuple(_input(sig).shape), rt)
            elif rt.name == "ncnn":
                fn = _ncnn_runner(sig, rt, folder)
            elif rt.name == "mnn":
                fn = _mnn_runner(sig, rt, folder)
            else:
                fn = onnx_runner(_conv_onnx(sig), rt)
            yield sig, _median_ms(fn)


def time_conv(sig: tuple, rt: Runtime) -> float:
    """Milliseconds of one conv of signature ``sig`` on ``rt``."""
    return next(time_convs([sig], rt))[1]


def call_overhead_ms(rt: Runtime) -> float:
    """Milliseconds one runtime call costs with next to no work (an Identity on 16 values; on NCNN, LiteRT,
    ExecuTorch and MNN a 1x1 conv of one value): timed alone, every conv carries it once, while the whole model pays
    it once in total, so it is taken off each conv's time."""
    if rt.name == "torch":
        return _median_ms(torch_runner(nn.Identity(), (1, 16), rt), runs=50)
    if rt.name not in ("onnxruntime", "openvino"):
        return min(time_conv(TINY, rt) for _ in range(3))
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    return _median_ms(onnx_runner(model, rt), runs=50)
