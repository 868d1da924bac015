"""Export of pruned models through Ultralytics' exporter: clean ONNX graphs and parity in every precision."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from ultralytics import YOLO

from conftest import needs, run_cli
from yolo_prune.checkpoint import save_checkpoint
from yolo_prune.datasets import builtin_dataset
from yolo_prune.engine.targets import prune_model
from yolo_prune.deploy.export import TOLERANCE, export, parity


def pruned_pt(tmp_path, cfg: str, nc: int = 6):
    """A pruned model whose outputs are informative: final convs reset so scores spread around 0.5, boxes in the image.

    (Ultralytics' bias init makes random-init scores ~1e-5 and boxes saturate, so any export would 'match'.)
    """
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(1)  # deterministic: some random inits are ill-conditioned in fp16 (PyTorch's own fp16 differs)
    model = DetectionModel(cfg, nc=nc, verbose=False)
    prune_model(model, prune=0.5)
    torch.manual_seed(0)
    with torch.no_grad():
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:  # random-init activations shrink ~3x per layer in eval mode: calibrate BN statistics
            m.momentum = None  # cumulative average
        model.train()
        for _ in range(3):
            model(torch.rand(4, 3, 128, 128))
        for m in bns:
            m.momentum = 0.03
        model.eval()
        for m in model.modules():  # random-init attention logits reach ~300 (a trained model's stay a few units),
            if type(m).__name__ == "Attention":  # where fp16 softmax differs in PyTorch itself
                m.qkv.bn.weight.mul_(0.25)
        head = model.model[-1]
        for attr in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
            for seq in getattr(head, attr, None) or []:
                seq[-1].bias.zero_()
                # some heads start at zero weights (scores would all tie at 0.5); class logits stay in a trained
                # model's range (|logit| of a few units), where fp16's relative rounding is what parity measures
                seq[-1].weight.normal_(0, 0.01 if attr.endswith("cv3") else 0.02)
    return save_checkpoint(model, tmp_path / f"{cfg.split('.')[0]}.pt", {"task": "detect", "imgsz": 128})


def test_onnx_graph_of_pruned_model_has_stock_ops(tmp_path):
    """Pruning only changes widths: the pruned ONNX graph has the unpruned one's ops, node for node by type (no extra
    conv per C2f/C3k2 block, the stock equal Split the exporter emits), so runtimes see the stock structure."""
    from collections import Counter

    from ultralytics.nn.tasks import DetectionModel

    for cfg in ("yolov8n.yaml", "yolo11n.yaml"):
        pruned = pruned_pt(tmp_path, cfg)
        stock = save_checkpoint(DetectionModel(cfg, nc=6, verbose=False), tmp_path / "stock.pt", {"task": "detect"})
        ops = [
            Counter(
                n.op_type for n in onnx.load(YOLO(str(pt)).export(format="onnx", imgsz=128, simplify=True)).graph.node
            )
            for pt in (stock, pruned)
        ]
        assert ops[0] == ops[1] and ops[1]["Conv"] > 50 and ops[1]["Split"] > 0, cfg


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", pytest.param("yolo26n.yaml", marks=needs("yolo26 export"))])
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("quantize", [None, *(pytest.param(q, marks=needs("quantize")) for q in (16, 8))])
def test_export_parity_every_precision(tmp_path, cfg, fmt, quantize):
    data = builtin_dataset("shapes-64")  # INT8 calibration on 16 images; the 2 of the tiny set are too few
    res = export(pruned_pt(tmp_path, cfg), format=fmt, imgsz=128, quantize=quantize, data=data)
    stat, tol = TOLERANCE[quantize or 32]
    assert res[f"{stat}_abs_diff"] <= tol
    if quantize is None:
        assert res["max_abs_diff"] <= 1e-3
    if quantize == 8 and fmt == "onnx":  # really quantized, not a silent fp32 fallback
        ops = {n.op_type for n in onnx.load(res["file"]).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    elif quantize == 8:
        import openvino as ov

        ops = {op.get_type_name() for op in ov.Core().read_model(next(Path(res["file"]).glob("*.xml"))).get_ops()}
        assert "FakeQuantize" in ops or "FakeConvert" in ops


@needs("yolo26 export")
def test_yolo26_nms_free_dynamic_export(tmp_path):
    pt = pruned_pt(tmp_path, "yolo26n.yaml")
    res = export(pt, format="onnx", imgsz=128, nms=False, dynamic=True, simplify=True)
    model = onnx.load(res["file"])
    out = model.graph.output[0].type.tensor_type.shape.dim
    assert out[-1].dim_value == 6  # (B, max_det, 6): x1 y1 x2 y2 score class
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert res["max_abs_diff"] <= 1e-3


def test_parity_catches_a_wrong_export(tmp_path):
    a, b = pruned_pt(tmp_path / "a", "yolo11n.yaml"), None
    (tmp_path / "b").mkdir()
    other = YOLO(str(a)).model
    with torch.no_grad():
        other.model[0].conv.weight.mul_(-1)  # same shapes, different function
    b = save_checkpoint(other, tmp_path / "b" / "other.pt", {"task": "detect"})
    f = YOLO(str(b)).export(format="onnx", imgsz=128)
    d = parity(a, f, "onnx", 128)
    assert d["max"] > TOLERANCE[32][1] and d["mean"] > TOLERANCE[8][1]  # caught by every precision's criterion


def test_export_cli_reports_parity(tmp_path):
    pt = pruned_pt(tmp_path, "yolo11n.yaml")
    r = run_cli("export", f"model={pt}", "format=onnx", "imgsz=128", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(x for x in (r.stdout + r.stderr).splitlines() if "parity vs PyTorch" in x)
    assert float(line.split("max abs diff ")[1].split(",")[0]) <= 1e-3 and line.endswith("ok")


def test_benchmark_cli_writes_table_csv_json_png(tmp_path):
    base = tmp_path / "base.pt"
    from ultralytics.nn.tasks import DetectionModel

    save_checkpoint(DetectionModel("yolo11n.yaml", nc=6, verbose=False), base, {"task": "detect"})
    pt = pruned_pt(tmp_path, "yolo11n.yaml")
    r = run_cli(
        "benchmark",
        f"model={pt}",
        f"base={base}",
        "imgsz=128",
        "runs=5",
        "data=shapes-8",
        f"project={tmp_path}/b",
        "name=x",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "b" / "x"
    assert {p.name for p in out.iterdir()} >= {"benchmark.csv", "benchmark.json", "benchmark.png"}
    res = json.loads((out / "benchmark.json").read_text())
    assert res["summary"]["gflops_ratio"] > 1.8
    for fmt in ("onnx", "openvino"):
        lat = res["rows"]["pruned"][f"{fmt}_latency"]
        assert lat["median_ms"] > 0 and lat["clock"] == ("cpu" if res["threads"] == 1 else "wall")
        assert res["summary"][f"{fmt}_speedup"] > 0 and f"{fmt} ms" in (r.stdout + r.stderr)
        assert 0 <= res["rows"]["pruned"][f"{fmt}_map50_95"] <= 1
        assert f"{fmt} mAP50-95" in (out / "benchmark.csv").read_text()
    bad = run_cli("benchmark", f"model={pt}", f"base={base}", "formats=onnx,engine", f"project={tmp_path}/c")
    assert bad.returncode == 2 and "formats" in bad.stderr and not (tmp_path / "c").exists()


def test_gpu_benchmark_script_runs_end_to_end_on_the_cpu(tmp_path):
    """benchmarks/gpu.py, the one command a lent GPU runs, with --device cpu: what it shares with the GPU path (three
    variants, prune_latency with prune_runtime=torch, interleaved timing at each batch, the result files, a refused
    target kept as a row); the CUDA timing and TensorRT lines run only on a GPU."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu.py"
    r = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--models", "yolo11n", "--imgsz", "96", "--batches", "1,2",
         "--runs", "2", "--latency", "0.2", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=script.parent, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert [(row["runtime"], row["batch"]) for row in res["rows"]] == [("torch-cpu-fp32", 1), ("torch-cpu-fp32", 2)]
    for row in res["rows"]:
        assert all(v > 0 for v in row["ms"].values()) and row["speedup"]["base"] == 1.0
        g = row["gflops"]
        assert g["prune=0.5"] == pytest.approx(0.5 * g["base"], abs=0.03 * g["base"]) and g["prune_latency=0.2"] < g["base"]
        assert row["latency_plan"]["measured_speedup"] > 1
    assert res["skipped"] == ["yolo11n TensorRT: --device cpu"] and "python " in res["command"]
    assert "| yolo11n | torch-cpu-fp32 | 2 |" in (tmp_path / "gpu.md").read_text()
    r = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--models", "yolo11n", "--imgsz", "96", "--batches", "1",
         "--runs", "2", "--latency", "0.97", "--out", str(tmp_path / "refused")],
        capture_output=True, text=True, cwd=script.parent, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads((tmp_path / "refused" / "gpu.json").read_text())["rows"][0]
    assert "cannot be reached" in row["latency_plan"]["refused"] and "prune_latency=0.97" not in row["ms"]
    assert "Refused: yolo11n" in (tmp_path / "refused" / "gpu.md").read_text()


def test_a_failed_export_removes_only_what_it_wrote(tmp_path, monkeypatch):
    """The exporter's own failure is one line, and only its outputs (named after the checkpoint) are removed: what was
    there before, and what another process makes meanwhile, stay."""
    from ultralytics.engine.model import Model

    from yolo_prune.cfg import PruneError

    pt = save_checkpoint(YOLO("yolo11n.yaml").model, tmp_path / "m.pt", {"task": "detect", "imgsz": 64})
    (tmp_path / "m.onnx.txt").write_text("mine")  # there before: kept even though named after the checkpoint

    def failing_export(self, **kwargs):
        (tmp_path / "m.onnx").write_bytes(b"partial")
        (tmp_path / "m_openvino_model").mkdir()
        (tmp_path / "other.pt").write_bytes(b"another run's")
        raise AssertionError("converter output too small")

    monkeypatch.setattr(Model, "export", failing_export)
    with pytest.raises(PruneError, match=r"^format=onnx: Ultralytics' exporter stopped: converter output too small "
                                         r"\(removed what it had written: m.onnx, m_openvino_model\)$"):  # fmt: skip
        export(pt, format="onnx", imgsz=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.txt", "m.pt", "other.pt"]


def test_export_keys_as_ultralytics_maps_them(monkeypatch):
    import ultralytics.engine.exporter as exporter

    from yolo_prune.deploy import export as ex

    assert ex._exported_nms("onnx", {"end2end": True}) is False  # Ultralytics' get_cfg: end2end=True -> nms=False
    assert ex._exported_nms("onnx", {"end2end": False, "nms": True}) is True
    assert ex._exported_nms("ncnn", {"nms": True}) is None  # no embedded NMS there: native outputs
    assert ex._takes_data("openvino") and not ex._takes_data("ncnn")
    table = exporter.export_formats()
    old = {**table, "Arguments": [[a for a in args if a != "data"] for args in table["Arguments"]]}
    monkeypatch.setattr(exporter, "export_formats", lambda: old)  # before 8.4.50 no format lists data=
    assert ex._takes_data("openvino") and ex._takes_data("ncnn")  # ... and every format took it


def test_torch_runner_times_at_prune_threads_and_restores_them():
    from yolo_prune.engine.runtime import Runtime, torch_runner

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x

    before = torch.get_num_threads()
    torch_runner(Probe(), (1, 3), Runtime("torch", "cpu", threads=1))()
    assert seen == [1] and torch.get_num_threads() == before
