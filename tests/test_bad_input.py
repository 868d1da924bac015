"""Every bad input, in every mode: exit 2, one line naming what was wrong and what is accepted, nothing written.

Run in-process through ``cli.entrypoint(argv)`` (``run_cli``); tests/test_prune_cli.py keeps one real subprocess for
the console script's exit status.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ultralytics import YOLO

from conftest import run_cli
from yolo_prune.checkpoint import save_checkpoint
from yolo_prune.support import has


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_pt) -> dict[str, str]:
    """Inputs the table refers to: checkpoints of several kinds, a bad dataset yaml, a sensitivity table of yolo11n."""
    d = tmp_path_factory.mktemp("inputs")
    pose = save_checkpoint(YOLO("yolo26n-pose.yaml").model, d / "pose26.pt", {"task": "pose", "imgsz": 64})
    seg = save_checkpoint(YOLO("yolo26n-seg.yaml").model, d / "seg26.pt", {"task": "segment", "imgsz": 64})
    (d / "images" / "val").mkdir(parents=True)
    (d / "bad_nc.yaml").write_text(f"path: {d}\ntrain: images/val\nval: images/val\nnc: 3\nnames: [a, b]\n")
    params = sum(p.numel() for p in YOLO("yolo11n.yaml").model.parameters())
    (d / "sens11.csv").write_text(
        "layer,ratio,channels_removed,params,gflops,map50,map50_95,drop\n"
        f"none,0.0,0,{params},6.5,0.5,0.3,0.0\n2,0.5,16,{params - 1000},6.0,0.5,0.29,0.01\n"
    )
    return {"pt": str(trained_pt), "pose": str(pose), "seg": str(seg), "bad_nc": str(d / "bad_nc.yaml"),
            "sens": str(d / "sens11.csv")}  # fmt: skip


ALL_LAYERS = ",".join(map(str, range(24)))
# (argv with {pt}/{pose}/... placeholders, what the one line must say)
CASES = {
    "prune: data= missing (taylor)": (["prune", "model=yolo11n.yaml", "prune=0.5", "prune_method=taylor",
                                       "data=missing.yaml"], "data='missing.yaml' is not found"),
    "prune: data= missing (l2 reads none)": (["prune", "model=yolo11n.yaml", "prune=0.5", "data=none.yaml"],
                                             "data='none.yaml' is not found"),
    "train: data= missing": (["train", "model=yolo11n.yaml", "data=missing.yaml", "epochs=1"], "is not found"),
    "sensitivity: data= missing": (["sensitivity", "model={pt}", "data=missing.yaml"], "is not found"),
    "val: data= missing": (["val", "model={pt}", "data=missing.yaml"], "is not found"),
    "train: nc and names differ": (["train", "model=yolo11n.yaml", "data={bad_nc}", "epochs=1"], "must match"),
    "train: distill_model= missing": (["train", "model=yolo11n.yaml", "data=shapes-8", "epochs=1",
                                       "distill_model=missing.pt"], "distill_model='missing.pt' is not found"
                                      if has("distillation") else "distill_model=missing.pt needs ultralytics>="),
    "export: format=bogus": (["export", "model={pt}", "format=bogus"], "format='bogus' is invalid; accepted: "),
    "export: format=paddle, not installed": (["export", "model={pt}", "format=paddle"], "format=paddle needs paddle"),
    "export: format=engine, no TensorRT": (["export", "model={pt}", "format=engine"], "needs tensorrt"),
    "export: imgsz=abc": (["export", "model={pt}", "imgsz=abc"], "imgsz='abc' is invalid"),
    "export: a key the format does not take": (["export", "model={pt}", "format=openvino", "opset=12"],
                                               "argument 'opset' is not supported for format='openvino'; accepted"),
    "benchmark: formats=onnx,trt": (["benchmark", "model={pt}", "base={pt}", "formats=onnx,trt"],
                                    "formats=trt is invalid; accepted: onnx, openvino"),
    "benchmark: runs=0": (["benchmark", "model={pt}", "base={pt}", "runs=0"], "runs=0 is invalid"),
    "benchmark: runs=-3": (["benchmark", "model={pt}", "base={pt}", "runs=-3"], "runs=-3 is invalid"),
    "benchmark: runs=abc": (["benchmark", "model={pt}", "base={pt}", "runs=abc"], "runs='abc' is invalid"),
    "benchmark: base of another family/task/nc": (["benchmark", "model={pt}", "base={pose}"], "differs; accepted"),
    "benchmark: device=0 without a GPU": (["benchmark", "model={pt}", "base={pt}", "device=0"],
                                          "device=0 is not available here"),
    "predict: source= missing": (["predict", "model={pt}", "source=missing.jpg"], "source='missing.jpg' is not found"),
    "prune: prune_ignore leaves nothing": (["prune", "model=yolo11n.yaml", "prune=0.5", f"prune_ignore={ALL_LAYERS}",
                                            "imgsz=64"], "prune=0.5 cannot be reached on this model: the plan removes 0.0% of the GFLOPs (prune_ignore leave"),
    "prune: sensitivity table of another model": (["prune", "model={seg}", "prune=0.5", "prune_method=sensitivity",
                                                   "prune_sensitivity={sens}"], "was made on a model with"),
    "train: resume a finished run": (["train", "resume=True", "model={pt}"], "is a finished run"),
    "train: resume with nothing to resume": (["train", "resume=True"], "no last.pt found"),
    "train: prune_setps": (["train", "model=yolo11n.yaml", "prune_setps=2"], "did you mean 'prune_steps'"),
    "train: prune_metod": (["train", "model=yolo11n.yaml", "prune_metod=l1"], "did you mean 'prune_method'"),
    "train: prune_distil": (["train", "model=yolo11n.yaml", "prune_distil=True"], "did you mean 'prune_distill'"),
    "train: prune_reg on zeroed weights": (["train", "model=yolo11n.yaml", "prune=0.5", "prune_mode=unstructured",
                                           "prune_reg=1"], "prune_reg decays whole channel groups"),
    "train: prune_start past the default end": (["train", "model=yolo11n.yaml", "data=shapes-8", "epochs=2",
                                                 "prune=0.5", "prune_start=1"], "the default prune_end"),
}  # fmt: skip


def written(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, files, case):
    argv, needle = CASES[case]
    argv = [a.format(**files) for a in argv]
    if argv[0] in ("prune", "train", "benchmark", "sensitivity"):
        argv.append(f"project={tmp_path / 'out'}")
    before = written(tmp_path)
    r = run_cli(*argv, cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (case, r.stderr[-3000:], r.stdout[-2000:])
    assert len(lines) == 1 and lines[0].startswith("yolo-prune: error: ") and needle in lines[0], (case, lines)
    assert "accepted" in lines[0] or "must match" in lines[0], lines[0]
    assert written(tmp_path) == before, (case, written(tmp_path) - before)


def test_train_help_lists_the_plugin_keys():
    r = run_cli("train", "model=yolo11n.yaml", "prune_setps=2")
    accepted = r.stderr.split("accepted: ")[1]
    assert "prune_steps" in accepted and "prune_distill" in accepted and "epochs" in accepted


def test_ctrl_c_is_one_line(tmp_path, monkeypatch):
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("yolo_prune.modes.oneshot.prune_file", interrupted)
    r = run_cli("prune", "model=yolo11n.yaml", "prune=0.5", f"project={tmp_path / 'out'}")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_sensitivity_leaves_no_empty_folders(tmp_path, trained_pt):
    r = run_cli("sensitivity", f"model={trained_pt}", "data=shapes-8", "imgsz=64", "layers=2", "ratios=0.5",
                f"project={tmp_path / 'out'}", "name=s", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s"]
    assert sorted(written(tmp_path)) == ["out", "out/s", "out/s/sensitivity.csv", "out/s/sensitivity.png"]


def test_training_a_pruned_checkpoint_warns_about_no_frozen_layer(tmp_path, trained_pt, log_lines):
    pruned = run_cli("prune", f"model={trained_pt}", "prune=0.3", "imgsz=64", f"project={tmp_path}", "name=p")
    assert pruned.returncode == 0, pruned.stderr[-2000:]
    r = run_cli("train", f"model={tmp_path}/p/weights/pruned.pt", "data=shapes-8", "epochs=1", "imgsz=64", "batch=4",
                "workers=0", "plots=False", "val=False", f"project={tmp_path}", "name=t")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    frozen = [ln for ln in log_lines if "for frozen layer" in ln]
    assert len(frozen) <= 1 and any("training the pruned model as it is" in ln for ln in log_lines)


def test_resume_before_the_first_step_says_so(tmp_path, log_lines):
    """A run stopped before its first step resumes with a line that says no step has run yet (not 'the pruned
    model')."""
    from yolo_prune import add_pruning

    saved = tmp_path / "epoch1.pt"

    def interrupt(t):  # last.pt as a kill after epoch 1 would leave it (a finished run strips it)
        if t.epoch == 0 and not saved.exists():  # once: the final validation fires this event again
            saved.write_bytes(t.last.read_bytes())
            t.stop = True

    model = add_pruning(YOLO("yolo11n.yaml"), prune=0.3, prune_steps=1, prune_start=2)
    model.add_callback("on_fit_epoch_end", interrupt)
    model.train(data="shapes-8", epochs=3, imgsz=64, batch=4, workers=0, plots=False, val=False,
                project=str(tmp_path), name="r")  # fmt: skip
    last = tmp_path / "r" / "weights" / "last.pt"
    last.write_bytes(saved.read_bytes())
    log_lines.clear()
    add_pruning(YOLO(str(last))).train(resume=True)
    said = [ln for ln in log_lines if "as it is" in ln]
    assert said and all("no step has run yet" in ln for ln in said), said
    assert YOLO(str(last)).model.prune_state["done"] == 1  # and the step then ran
