"""Edge runtimes (NCNN, LiteRT, ExecuTorch, MNN; the [edge] extra): parity of a pruned model's export on each, the
benchmark timing them, the latency table timed on them, prune_latency's closed loop on one, and the line a missing
runtime gives."""

import json

import pytest

from conftest import needs, run_cli
from yolo_prune.cfg import PruneError
from yolo_prune.deploy.export import TOLERANCE, export
from yolo_prune.engine.backends import BACKENDS, check_backend, precision_found
from yolo_prune.engine.convs import time_convs
from yolo_prune.engine.runtime import Runtime

EDGE = ("ncnn", "litert", "executorch", "mnn")
pytestmark = needs("edge runtimes")  # the refusal on earlier releases is tested in test_support.py


def exports(fmt: str) -> bool:
    from ultralytics.engine.exporter import export_formats

    return fmt in export_formats()["Argument"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """The shipped converged yolo11n, one-shot pruned by half (a trained model: parity on an untrained one compares
    near-constant outputs)."""
    out = tmp_path_factory.mktemp("edge")
    r = run_cli("prune", "model=yolo11n-shapes.pt", "prune=0.5", "imgsz=64", f"project={out}", "name=p")
    assert r.returncode == 0, r.stderr[-2000:]
    return out / "p" / "weights" / "pruned.pt"


# each format at fp32, and its quantized variant where the runtime has one (ExecuTorch's exporter has none)
CASES = [(f, q) for f in EDGE for q in (32, *BACKENDS[f].quantize)]


@pytest.mark.parametrize("fmt,quantize", CASES, ids=[f"{f}-{q}" for f, q in CASES])
def test_export_parity_on_each_edge_runtime(pruned, tmp_path, fmt, quantize):
    if not exports(fmt):
        pytest.skip(f"this Ultralytics release does not export format={fmt}")
    src = tmp_path / "m.pt"
    src.write_bytes(pruned.read_bytes())
    res = export(src, format=fmt, imgsz=64, quantize=quantize)
    stat, tol = TOLERANCE[quantize]
    assert res["criterion"] == f"{stat} <= {tol:g}" and res[f"{stat}_abs_diff"] <= tol, res
    assert res["max_abs_diff"] > 0  # the runtime really ran (a copy of PyTorch's outputs would differ by 0)
    found = precision_found(res["file"], fmt)
    assert found == set() if quantize == 32 else quantize in found, (found, res)


REFUSED = [
    ({"format": "ncnn", "quantize": 8}, r"^quantize=8 is not a precision format=ncnn exports; accepted: 32, 16$"),
    ({"format": "ncnn", "dynamic": True}, r"^argument 'dynamic' is not supported for format='ncnn'; accepted for "
     r"format=ncnn: batch, quantize$"),
    ({"format": "executorch", "simplify": False}, r"'simplify' is not supported .*; accepted for format=executorch: batch$"),
    # the exporter's own refusal of a key combination (a ValueError in Ultralytics), one line before any file
    ({"format": "mnn", "dynamic": True, "nms": True}, r"^format=mnn: Ultralytics' exporter stopped: Alibaba MNN export "
     r"does not support combining 'dynamic=True' with 'nms=True'\.$"),
]  # fmt: skip


@pytest.mark.parametrize("keys,message", REFUSED, ids=[str(k) for k, _ in REFUSED])
def test_what_a_format_does_not_take_is_refused_before_writing(pruned, tmp_path, keys, message):
    src = tmp_path / "m.pt"
    src.write_bytes(pruned.read_bytes())
    with pytest.raises(PruneError, match=message):
        export(src, imgsz=64, **keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    r = run_cli("export", f"model={src}", "imgsz=64", *(f"{k}={v}" for k, v in keys.items()))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_data_gives_parity_its_image_on_a_format_whose_exporter_does_not_take_it(pruned, tmp_path, monkeypatch):
    import yolo_prune.deploy.export as ex

    read, imread = [], ex.cv2.imread
    monkeypatch.setattr(ex.cv2, "imread", lambda f, *a: read.append(f) or imread(f, *a))
    src = tmp_path / "m.pt"
    src.write_bytes(pruned.read_bytes())
    res = export(src, format="ncnn", imgsz=64, data="shapes-8")  # Ultralytics' ncnn export refuses data=
    assert 0 < res["max_abs_diff"] <= TOLERANCE[32][1], res
    assert len(read) == 1 and "shapes" in read[0] and "/val/" in read[0].replace("\\", "/"), read  # data's image


def test_nms_on_a_format_without_it_is_dropped_and_parity_still_runs(pruned, tmp_path):
    src = tmp_path / "m.pt"
    src.write_bytes(pruned.read_bytes())
    res = export(src, format="ncnn", imgsz=64, nms=True)  # the exporter exports native outputs (its warning)
    assert "skipped" not in res and 0 < res["max_abs_diff"] <= TOLERANCE[32][1], res


def test_missing_runtime_is_one_line_naming_the_extra(monkeypatch, pruned, tmp_path):
    import yolo_prune.inputs as inputs

    before = sorted(p.name for p in pruned.parent.iterdir())
    real = inputs.installed
    monkeypatch.setattr(inputs, "installed", lambda m: m not in {"ncnn", "litert_torch"} and real(m))
    with pytest.raises(PruneError, match=r"^format=ncnn needs ncnn, which is not installed .*pip install 'yolo-prune\[edge\]'"):
        check_backend("ncnn")
    with pytest.raises(PruneError, match=r"^prune_runtime=litert needs litert_torch, .*, or another runtime$"):
        check_backend("litert", key="prune_runtime")
    for argv in (("export", f"model={pruned}", "format=ncnn"), ("prune", f"model={pruned}", "prune_latency=0.3",
                 "prune_runtime=ncnn", f"project={tmp_path}", "name=x"),
                 ("benchmark", f"model={pruned}", f"base={pruned}", "formats=onnx,ncnn", f"project={tmp_path}")):  # fmt: skip
        r = run_cli(*argv)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert "yolo-prune[edge]" in r.stderr and "ncnn" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written: no run folder,
    assert sorted(p.name for p in pruned.parent.iterdir()) == before  # and no export beside the checkpoint


@pytest.mark.parametrize("name", EDGE)
def test_convs_time_on_each_edge_runtime(name):
    """The latency table's measurements on each runtime: a conv of 4x the work takes longer than the small one."""
    rt = Runtime(name, "cpu", threads=1, batch=1, imgsz=64)
    small, big = (16, 16, 3, 1, 1, 1, 1, 32, 32, True, 1), (32, 32, 3, 1, 1, 1, 1, 32, 32, True, 1)
    dw = (32, 32, 3, 2, 1, 32, 1, 32, 32, False, 1)  # depthwise, strided, no activation
    ms = dict(time_convs([small, big, dw, big, small], rt))
    assert all(v > 0 for v in ms.values()) and ms[big] > ms[small], ms


def test_benchmark_times_edge_formats(pruned, tmp_path):
    r = run_cli("benchmark", f"model={pruned}", "base=yolo11n-shapes.pt", "formats=ncnn,mnn,executorch", "imgsz=64",
                "runs=5",
                "threads=1", f"project={tmp_path}", "name=b")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    for fmt in ("ncnn", "mnn", "executorch"):
        assert res["summary"][f"{fmt}_speedup"] > 0 and res["rows"]["pruned"][f"{fmt}_parity"] <= 1e-3
    names = sorted(p.name for p in (tmp_path / "b" / "pruned").iterdir())
    assert all(any(n.endswith(end) for n in names) for end in ("_ncnn_model", ".mnn", "_executorch_model")), names
    assert res["threads"] == 1 and "(thread CPU time" in r.stdout + r.stderr  # 1 thread: each row on that clock
    assert all(res["rows"][k][f"{fmt}_latency"]["clock"] == "cpu" for k in ("base", "pruned") for fmt in ("ncnn", "mnn", "executorch"))


def test_prune_latency_on_ncnn(tmp_path, monkeypatch):
    """prune_latency's table and closed loop on NCNN (the hand-written conv models and the pnnx export)."""
    monkeypatch.setenv("YOLO_PRUNE_CACHE", str(tmp_path / "cache"))
    r = run_cli("prune", "model=yolo11n-shapes.pt", "prune_latency=0.15", "prune_runtime=ncnn", "prune_threads=1",
                "imgsz=160", f"project={tmp_path}", "name=l")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lat = json.loads((tmp_path / "l" / "prune_summary.json").read_text())["latency"]
    assert lat["runtime"] == "ncnn" and lat["threads"] == 1 and lat["table_shapes_timed"] > 50 and lat["clock"] == "cpu"
    (pb, pp), (mb, mp) = lat["predicted_ms"], lat["measured_ms"]
    assert pp < pb and mp < mb and len(lat["measured_speedups"]) in (1, 3)  # one timing, or three when doubtful
    assert abs(1 / lat["measured_speedup"] - 0.85) <= 0.05, lat  # landed near the target (tolerance 0.02, noise)


def test_yolo26_nms_free_export_on_a_format_without_top_k(tmp_path):
    """nms=False on NCNN: Ultralytics' exporter drops the one-to-one head there (no top-k), and parity follows it."""
    src = tmp_path / "m.pt"
    from yolo_prune.assets import ASSETS

    src.write_bytes((ASSETS / "yolo26n-shapes.pt").read_bytes())
    res = export(src, format="ncnn", imgsz=64, nms=False)
    assert res["max_abs_diff"] <= 1e-3, res
