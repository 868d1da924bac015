"""One conv timed alone on each runtime: the latency table's measurements (:mod:`yolo_prune.engine.latency`).

A conv signature is ``(cin, cout, k, s, p, groups, dilation, h, w, act, batch)``. The model for one conv is built the
cheapest way each runtime allows, since a table needs hundreds of them:

- ONNX Runtime, OpenVINO: an ONNX graph written with ``onnx.helper``;
- NCNN: a ``.param`` / ``.bin`` pair written directly (the text format pnnx writes, weights after a 4-byte type tag);
- MNN: that ONNX graph through MNN's converter (a few ms each);
- LiteRT: a flatbuffer written with LiteRT's own schema (NHWC, as litert-torch lays a conv out inside a model);
- ExecuTorch: no cheap path exists, so :data:`CHUNK` convs are lowered at once (methods of one XNNPACK program, about
  0.4 s a conv) and each is run alone by its name;
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

from .backends import mnn_module, ncnn_net, no_runtime_installs, reset_executorch_threads, runtime_options
from .runtime import Runtime, _median_ms, cpu_timed, onnx_runner, torch_runner

CHUNK = 32  # convs per ExecuTorch program (lowering one costs seconds)
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
    net = ncnn_net(param, runtime_options("ncnn", rt.threads)["threads"])
    arr = np.ascontiguousarray(_input(sig)[0].numpy())
    x = ncnn.Mat(arr)  # points into arr's memory (no copy): arr must outlive it, or ncnn reads freed memory

    def run():
        with net.create_extractor() as ex:
            ex.input("x", x)
            ex.extract("y")

    run.keep = (net, arr, x)  # alive as long as the callable
    return run


def _mnn_runner(sig: tuple, rt: Runtime, folder: Path) -> Callable[[], Any]:
    from ultralytics.utils.files import import_execstack

    mnn = import_execstack("MNN", "_mnncengine*.so", "_tools*.so")  # as Ultralytics loads it
    with no_runtime_installs():
        from MNN.tools import mnnconvert
    src, dst = folder / "conv.onnx", folder / "conv.mnn"
    src.write_bytes(_conv_onnx(sig))
    mnnconvert.convert(["", "-f", "ONNX", "--modelFile", str(src), "--MNNModel", str(dst), "--bizCode", "conv"])
    opts = runtime_options("mnn", rt.threads)
    net = mnn_module(dst, opts["threads"], opts["mnn_precision"])
    x = _input(sig)
    var = mnn.expr.const(x.data_ptr(), x.shape)  # points into x's memory

    def run():
        for y in net.onForward([var]):
            y.read()

    run.keep = (net, x)  # alive as long as the callable
    return run


class _TFLGraph:
    """A LiteRT graph being written: tensors (with constant buffers) and ops, serialized as one subgraph."""

    def __init__(self, tfl):
        self.tfl, self.codes, self.buffers, self.tensors, self.ops = tfl, [], [tfl.BufferT()], [], []

    def tensor(self, shape, data=None) -> int:
        t = self.tfl.TensorT()
        t.shape, t.type, t.buffer = np.array(shape, np.int32), self.tfl.TensorType.FLOAT32, 0
        t.name = f"t{len(self.tensors)}"
        if data is not None:
            b = self.tfl.BufferT()
            b.data = np.frombuffer(data.astype(np.float32).tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], kind=None, options=None) -> None:
        if code not in [c.builtinCode for c in self.codes]:
            c = self.tfl.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
            self.codes.append(c)
        o = self.tfl.OperatorT()
        o.opcodeIndex = [c.builtinCode for c in self.codes].index(code)
        o.inputs, o.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        if kind is not None:
            o.builtinOptionsType, o.builtinOptions = kind, options
        self.ops.append(o)

    def serialize(self, x: int, out: int, flatbuffers) -> bytes:
        graph, model = self.tfl.SubGraphT(), self.tfl.ModelT()
        graph.tensors, graph.operators = self.tensors, self.ops
        graph.inputs, graph.outputs = np.array([x], np.int32), np.array([out], np.int32)
        model.version, model.subgraphs, model.buffers, model.operatorCodes = 3, [graph], self.buffers, self.codes
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _tflite_conv(sig: tuple) -> bytes:
    """A one-conv LiteRT model (NHWC ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` + bias, then SiLU as ``LOGISTIC`` and ``MUL``
    if ``act``), built with LiteRT's own flatbuffer schema: what litert-torch makes of a conv inside a model (its
    NCHW input is transposed once at the graph's edge), without the seconds a conversion costs."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl

    cin, cout, k, s, p, g, d, h, w, act, batch = sig
    dw = g > 1 and g == cin == cout  # DEPTHWISE_CONV_2D; other grouped convs are a CONV_2D with cin // g inputs
    graph = _TFLGraph(tfl)
    tensor, op, tensors = graph.tensor, graph.op, graph.tensors
    rng = np.random.default_rng(0)
    x = cur = tensor([batch, h, w, cin])
    if p and p != d * (k - 1) // 2:  # not what SAME pads: pad explicitly, then a VALID conv
        pad = tensor([4, 2], np.array([[0, 0], [p, p], [p, p], [0, 0]]).astype(np.int32).view(np.float32))
        tensors[pad].type = tfl.TensorType.INT32
        h, w, cur = h + 2 * p, w + 2 * p, tensor([batch, h + 2 * p, w + 2 * p, cin])
        op(tfl.BuiltinOperator.PAD, [x, pad], [cur])
    same = 0 < p == d * (k - 1) // 2
    ho, wo = ((n + 2 * p * same - d * (k - 1) - 1) // s + 1 for n in (h, w))
    wt = tensor(
        [1, k, k, cout] if dw else [cout, k, k, cin // g],
        rng.standard_normal(cout * k * k * (1 if dw else cin // g)) * 0.05,
    )
    y = tensor([batch, ho, wo, cout])
    opts = tfl.DepthwiseConv2DOptionsT() if dw else tfl.Conv2DOptionsT()
    opts.padding = tfl.Padding.SAME if same else tfl.Padding.VALID
    opts.strideH = opts.strideW = s
    opts.dilationHFactor = opts.dilationWFactor = d
    if dw:
        opts.depthMultiplier = 1
    op(tfl.BuiltinOperator.DEPTHWISE_CONV_2D if dw else tfl.BuiltinOperator.CONV_2D, [cur, wt, tensor([cout], np.zeros(cout))],
       [y], tfl.BuiltinOptions.DepthwiseConv2DOptions if dw else tfl.BuiltinOptions.Conv2DOptions, opts)  # fmt: skip
    out = y
    if act:
        sg, out = tensor([batch, ho, wo, cout]), tensor([batch, ho, wo, cout])
        op(tfl.BuiltinOperator.LOGISTIC, [y], [sg])
        op(tfl.BuiltinOperator.MUL, [y, sg], [out], tfl.BuiltinOptions.MulOptions, tfl.MulOptionsT())
    return graph.serialize(x, out, flatbuffers)


def _litert_runner(sig: tuple, rt: Runtime) -> Callable[[], Any]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=_tflite_conv(sig), num_threads=runtime_options("litert", rt.threads)["threads"])
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    interpreter.set_tensor(inp["index"], np.random.rand(*inp["shape"]).astype(np.float32))
    return interpreter.invoke


def _executorch_runners(sigs: list[tuple], rt: Runtime, folder: Path) -> dict[tuple, Callable[[], Any]]:
    import logging

    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge
    from executorch.runtime import Runtime as ETRuntime

    names = {f"c{i}": sig for i, sig in enumerate(sigs)}
    programs = {n: torch.export.export(_Conv(sig).eval(), (_input(sig),)) for n, sig in names.items()}
    file = folder / f"convs{len(list(folder.glob('*.pte')))}.pte"  # the previous chunk's program may map its file
    # to_edge + to_backend, not the exporter's to_edge_transform_and_lower: for a conv (+ SiLU) both give one XNNPACK
    # delegate of the same size and speed (checked by hand with executorch 1.5.1 on 6 shapes, within 1%), and this
    # way lowers about 2.3x faster (16 convs: 6.6 s instead of 15 s), which is most of a table's time. The partitioner logs a deprecation line for it.
    log = logging.getLogger(XnnpackPartitioner.__module__)
    level, log.level = log.level, logging.ERROR
    try:
        edge = to_edge(programs, compile_config=EdgeCompileConfig(_check_ir_validity=False))
        file.write_bytes(edge.to_backend(XnnpackPartitioner()).to_executorch().buffer)
    finally:
        log.setLevel(level)
    reset_executorch_threads(rt.threads)
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
        if rt.name == "executorch":
            for i in range(0, len(sigs), CHUNK):
                runners = _executorch_runners(sigs[i : i + CHUNK], rt, folder)
                for sig in sigs[i : i + CHUNK]:
                    yield sig, _median_ms(runners[sig], cpu=cpu_timed(rt.device, rt.threads))
            return
        for sig in sigs:
            if rt.name == "torch":
                fn = torch_runner(_Conv(sig), tuple(_input(sig).shape), rt)
            elif rt.name == "ncnn":
                fn = _ncnn_runner(sig, rt, folder)
            elif rt.name == "mnn":
                fn = _mnn_runner(sig, rt, folder)
            elif rt.name == "litert":
                fn = _litert_runner(sig, rt)
            else:
                fn = onnx_runner(_conv_onnx(sig), rt)
            yield sig, _median_ms(fn, cpu=cpu_timed(rt.device, rt.threads))


def time_conv(sig: tuple, rt: Runtime) -> float:
    """Milliseconds of one conv of signature ``sig`` on ``rt``."""
    return next(time_convs([sig], rt))[1]


def call_overhead_ms(rt: Runtime) -> float:
    """Milliseconds one runtime call costs with next to no work (an Identity on 16 values; on NCNN, LiteRT,
    ExecuTorch and MNN a 1x1 conv of one value): timed alone, every conv carries it once, while the whole model pays
    it once in total, so it is taken off each conv's time."""
    cpu = cpu_timed(rt.device, rt.threads)
    if rt.name == "torch":
        return _median_ms(torch_runner(nn.Identity(), (1, 16), rt), runs=50, cpu=cpu)
    if rt.name not in ("onnxruntime", "openvino"):
        return time_conv(TINY, rt)
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    return _median_ms(onnx_runner(model, rt), runs=50, cpu=cpu)
