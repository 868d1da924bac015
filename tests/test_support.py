"""Features gated on the Ultralytics release: an older one is simulated (its version, and the keys its default.yaml
lacks), and asking for a feature it does not have stops the run at its start, in one line, with nothing written."""

from __future__ import annotations

import pytest
from ultralytics import YOLO

from conftest import run_cli
from yolo_prune import add_pruning
from yolo_prune.cfg import PruneError
from yolo_prune.checkpoint import save_checkpoint
from yolo_prune.support import has, release


@pytest.fixture()
def older(monkeypatch):
    """Pretend the installed Ultralytics is ``v``; before 8.4.77 its default.yaml has no distillation keys."""

    def set_version(v: str) -> None:
        monkeypatch.setattr("yolo_prune.support.installed", lambda: release(v))
        monkeypatch.setattr("yolo_prune.support.version", lambda name: v)
        if release(v) < release("8.4.77"):
            from ultralytics.cfg import DEFAULT_CFG_DICT

            for k in ("distill_model", "dis"):
                monkeypatch.delitem(DEFAULT_CFG_DICT, k, raising=False)

    return set_version


def one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("yolo-prune: error: "), r.stderr[-2000:]
    return lines[0]


def test_the_feature_table_matches_the_installed_release():
    """Each feature's first release agrees with what the installed Ultralytics really has."""
    import importlib.util

    from ultralytics.cfg import DEFAULT_CFG_DICT

    if has("distillation"):  # (the wrapper and its keys arrived earlier, in 8.4.77)
        assert importlib.util.find_spec("ultralytics.nn.distill_model") is not None and "distill_model" in DEFAULT_CFG_DICT
    assert has("quantize") == ("quantize" in DEFAULT_CFG_DICT)
    assert has("yolo26 export") == (DEFAULT_CFG_DICT["nms"] is None)  # 8.4.142: NMS-free only with nms=False
    if has("edge runtimes"):
        assert importlib.util.find_spec("ultralytics.nn.backends") is not None
    assert release("8.4.190") > release("8.4.164") > release("8.4.8") and release("8.4.190+cpu") == (8, 4, 190)


@pytest.mark.parametrize(
    "argv, line",
    [
        (["prune=0.3", "prune_distill=True"], "prune_distill=True needs ultralytics>=8.4.164 (yolo-prune's distillation"),
        (["distill_model=teacher.pt"], "distill_model=teacher.pt needs ultralytics>=8.4.164"),
        (["dis=1.0", "prune=0.3"], "dis=1.0 needs ultralytics>=8.4.164"),
    ],
)
def test_distillation_needs_its_release(tmp_path, older, argv, line):
    older("8.4.60")
    r = run_cli("train", "model=yolo11n.yaml", "data=shapes-8", "epochs=2", *argv, f"project={tmp_path}", cwd=tmp_path)
    got = one_line(r)
    assert line in got and "8.4.60 is installed" in got and "accepted: pip install 'ultralytics>=8.4.164,<8.5'" in got
    assert list(tmp_path.iterdir()) == []


def test_distillation_in_python_stops_before_the_run_folder(tmp_path, older):
    older("8.4.60")
    with pytest.raises(PruneError, match=r"prune_distill=True needs ultralytics>=8\.4\.164"):
        add_pruning(YOLO("yolo11n.yaml"), prune=0.3, prune_distill=True)  # the callbacks refuse it: any trainer
    model = add_pruning(YOLO("yolo11n.yaml"), prune=0.3)
    with pytest.raises(PruneError, match=r"distill_model=t\.pt needs ultralytics>=8\.4\.164 .* 'ultralytics>=8\.4\.164,<8\.5'"):
        model.train(data="shapes-8", epochs=2, imgsz=64, distill_model="t.pt", project=str(tmp_path), name="t")
    assert not (tmp_path / "t").exists()


def test_quantize_needs_its_release_and_half_still_exports(tmp_path, older):
    older("8.4.79")
    pt = save_checkpoint(YOLO("yolo11n.yaml").model, tmp_path / "m.pt", {"task": "detect", "imgsz": 64})
    got = one_line(run_cli("export", f"model={pt}", "format=onnx", "quantize=16", cwd=tmp_path))
    assert "quantize=16 needs ultralytics>=8.4.80" in got and "or half=True or int8=True on this release" in got
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    from yolo_prune.deploy.export import canonical_quantize

    assert canonical_quantize({"half": True}) == 16 and canonical_quantize({"int8": True}) == 8  # that release's keys


def test_yolo26_export_and_latency_need_their_release(tmp_path, older):
    older("8.4.141")
    pt = save_checkpoint(YOLO("yolo26n.yaml").model, tmp_path / "m26.pt", {"task": "detect", "imgsz": 64})
    got = one_line(run_cli("export", f"model={pt}", "format=onnx", cwd=tmp_path))
    assert "exporting a YOLO26 model needs ultralytics>=8.4.142" in got
    got = one_line(run_cli("prune", f"model={pt}", "prune_latency=0.3", "imgsz=64", f"project={tmp_path}/p"))
    assert "prune_latency on a YOLO26 model needs ultralytics>=8.4.142" in got
    got = one_line(run_cli("train", f"model={pt}", "prune_latency=0.3", "data=shapes-8", f"project={tmp_path}/t"))
    assert "prune_latency on a YOLO26 model needs ultralytics>=8.4.142" in got  # at the start, no run folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m26.pt"]


def test_edge_runtimes_need_their_release(tmp_path, older):
    older("8.4.164")
    pt = save_checkpoint(YOLO("yolo11n.yaml").model, tmp_path / "m.pt", {"task": "detect", "imgsz": 64})
    from yolo_prune.deploy.export import _check_format, _no_parity

    assert _check_format("ncnn", 32, {}) is None  # export still runs, unchecked, as on engine
    assert _no_parity(None, "ncnn", 32, False).startswith("its runtime is checked from ultralytics>=8.4.190")
    got = one_line(run_cli("benchmark", f"model={pt}", f"base={pt}", "formats=ncnn", cwd=tmp_path))
    assert "formats=ncnn needs ultralytics>=8.4.190" in got and "format=onnx|openvino" in got
    got = one_line(run_cli("prune", f"model={pt}", "prune_latency=0.3", "prune_runtime=litert", f"project={tmp_path}/p"))
    assert "prune_runtime=litert needs ultralytics>=8.4.190" in got
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_version_parsing():
    assert release("8.4.8rc1") == (8, 4, 8) and release("8.4.77-1") == (8, 4, 77) and release("8.4.190") == (8, 4, 190)
