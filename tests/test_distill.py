"""Distillation while pruning (prune_distill, distill_model= with steps) and new class sets after pruning."""

import csv
import shutil
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from conftest import needs, run_cli
from ultralytics import YOLO

from yolo_prune import add_pruning
from yolo_prune.checkpoint import save_checkpoint
from yolo_prune.datasets import builtin_dataset
from yolo_prune.engine.pruner import model_info
from yolo_prune.engine.targets import prune_model

TRAIN = {"imgsz": 64, "batch": 4, "workers": 0, "plots": False, "exist_ok": True}

pytestmark = needs("distillation")  # every test here trains with Ultralytics' DistillationModel


def _rows(run: Path) -> list[dict]:
    return [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(open(run / "results.csv"))]


def _projector_widths(ckpt: Path) -> list[tuple[int, int]]:
    """(projector input, head's first box conv input) per level of a distillation checkpoint's EMA."""
    w = torch.load(ckpt, weights_only=False)["ema"]
    head = w.student_model.model[-1]
    return [(p[0].in_channels, head.cv2[i][0].conv.in_channels) for i, p in enumerate(w.projector)]


def test_prune_distill_two_steps_resume_and_student_only_export(tmp_path, tiny_data, log_lines):
    m = add_pruning(YOLO("yolo11n.yaml"), prune=0.5, prune_steps=2, prune_start=1, prune_end=2, prune_distill=True)
    m.train(data=tiny_data, epochs=4, save_period=1, project=str(tmp_path), name="d", **TRAIN)
    w = tmp_path / "d" / "weights"
    rows = _rows(tmp_path / "d")
    dis = [float(r["train/dis_loss"]) for r in rows]
    assert dis[0] == 0 and all(d > 0 for d in dis[1:]), dis  # off before step 1, on from the step
    assert sum("prune_distill with dis=6.0" in x and x.startswith("WARNING") for x in log_lines) == 1  # default dis
    base_params = 2_591_010  # yolo11n nc=6: the student alone, never the teacher's parameters added
    assert float(rows[0]["model/params_M"]) == pytest.approx(base_params / 1e6, rel=1e-4)
    assert float(rows[-1]["model/params_M"]) < 0.6 * base_params / 1e6
    # the projectors follow both steps: their inputs are the head's (pruned) input widths at every level
    for epoch in (1, 2):
        widths = _projector_widths(w / f"epoch{epoch}.pt")
        assert all(a == b for a, b in widths), widths
    assert _projector_widths(w / "epoch2.pt") != _projector_widths(w / "epoch0.pt")
    teacher = YOLO(str(w / "teacher.pt")).model  # the model at step 1: unpruned, no schedule of its own
    assert model_info(teacher, 640)["gflops"] == pytest.approx(6.505, abs=0.01) and not hasattr(teacher, "prune_state")
    best = YOLO(str(w / "best.pt")).model
    assert type(best).__name__ == "DetectionModel" and not hasattr(best, "teacher_model")
    assert 0.47 <= 1 - model_info(best, 640)["gflops"] / 6.505 <= 0.53
    assert best.prune_state["base"]["map50_95"] is not None  # the summary's "before" figure
    assert any("yolo-prune summary" in x and "before" in x and "after" in x and "mAP50-95" in x for x in log_lines)

    # resume from the end of epoch 2 (1 of 2 steps done): the teacher is rebuilt from weights/teacher.pt
    shutil.copy(w / "epoch1.pt", w / "last.pt")
    add_pruning(YOLO(str(w / "last.pt"))).train(resume=str(w / "last.pt"))
    state = YOLO(str(w / "best.pt")).model.prune_state
    assert [h["step"] for h in state["history"]] == [1, 2]
    assert float(_rows(tmp_path / "d")[-1]["train/dis_loss"]) > 0

    # a distillation checkpoint (epoch{N}.pt holds the wrapper) loads as its student for prune / export / benchmark
    from yolo_prune.deploy.benchmark import describe
    from yolo_prune.checkpoint import load_model
    from yolo_prune.deploy.export import export
    from yolo_prune.engine.graph import check_supported

    student = load_model(w / "epoch2.pt")
    check_supported(student.model)
    n_student = sum(p.numel() for p in student.model.parameters())
    assert describe(str(w / "epoch2.pt"), [], 64, None)["params"] == n_student  # no projector counted
    assert export(w / "epoch2.pt", format="onnx", imgsz=64)["max_abs_diff"] is not None  # parity ran (and held)
    assert Path(student.export(format="onnx", imgsz=64)).is_file()  # the Python object exports as Ultralytics' does
    # ... and as a new start trains its pruned student
    add_pruning(YOLO(str(w / "epoch2.pt"))).train(data=tiny_data, epochs=1, project=str(tmp_path), name="n", **TRAIN)
    assert model_info(YOLO(str(tmp_path / "n" / "weights" / "best.pt")).model, 640)["gflops"] < 0.53 * 6.505

    # the export holds the student only
    f = YOLO(str(w / "best.pt")).export(format="onnx", imgsz=64, simplify=False)
    n = sum(int(torch.tensor(i.dims).prod()) for i in onnx.load(f).graph.initializer)
    student = sum(p.numel() for p in YOLO(str(w / "best.pt")).model.fuse().parameters())
    assert n == pytest.approx(student, rel=0.02), (n, student)


def test_distill_model_with_prune_steps_trains(tmp_path):
    teacher = YOLO("yolo11n.yaml")
    save_checkpoint(teacher.model, tmp_path / "teacher.pt", {"task": "detect", "imgsz": 64})
    r = run_cli("train", "model=yolo11n.yaml", "data=shapes-8", "imgsz=64", "batch=4", "workers=0", "plots=False",
                "epochs=3", "prune=0.5", "prune_steps=2", "prune_start=1", "prune_end=2",
                f"distill_model={tmp_path / 'teacher.pt'}", f"project={tmp_path}", "name=u", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(tmp_path / "u")
    assert all(float(x["train/dis_loss"]) > 0 for x in rows)
    assert float(rows[0]["model/params_M"]) == pytest.approx(2.59101, rel=1e-4)  # student only (the 4.54 M)
    best = YOLO(str(tmp_path / "u" / "weights" / "best.pt")).model
    assert 0.47 <= 1 - model_info(best, 640)["gflops"] / 6.505 <= 0.53


def test_prune_distill_refusals(tmp_path):
    r = run_cli("train", "model=yolo11n.yaml", "data=shapes-8", "epochs=2", "prune=0.5", "prune_distill=True",
                "distill_model=teacher.pt", f"project={tmp_path}", "name=d", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and "prune_distill" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("train", "model=yolo11n.yaml", "data=shapes-8", "epochs=2", "prune_distill=True",
                f"project={tmp_path}", "name=d", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and "prune_distill=True" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("train", "model=yolo11n-cls.yaml", "data=shapes-cls-8", "epochs=2", "prune=0.3", "prune_distill=True",
                f"project={tmp_path}", "name=d", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and "got task classify" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()
    # resuming a distillation run whose teacher file is gone: one line, not a download attempt
    gone = str(tmp_path / "gone" / "teacher.pt")
    last = save_checkpoint(YOLO("yolo11n.yaml").model, tmp_path / "last.pt", {"task": "detect", "distill_model": gone})
    ckpt = torch.load(last, weights_only=False)
    torch.save({**ckpt, "epoch": 0, "optimizer": {}}, last)  # an unfinished run's last.pt: there is a resume
    r = run_cli("train", f"resume={last}", cwd=tmp_path)
    assert r.returncode == 2 and "distill_model:" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _four_classes(name: str, dst: Path) -> str:
    """A built-in 8-image set reduced to its first 4 classes."""
    src = Path(builtin_dataset(name)).parent
    shutil.copytree(src, dst)
    for f in dst.rglob("labels/*.txt"):
        f.write_text("".join(x + "\n" for x in f.read_text().splitlines() if int(x.split()[0]) < 4))
    cfg = yaml.safe_load((dst / "data.yaml").read_text())
    cfg.update(path=str(dst), names={i: cfg["names"][i] for i in range(4)})
    (dst / "data.yaml").write_text(yaml.safe_dump(cfg))
    return str(dst / "data.yaml")


@pytest.mark.parametrize("family", ["yolo11n", "yolo26n", "yolo26n-seg"])
def test_pruned_nc80_model_trains_on_4_classes(tmp_path, family, log_lines):
    seg = family.endswith("-seg")
    four_classes = _four_classes("shapes-seg-8" if seg else "shapes-8", tmp_path / "four")
    y = YOLO(f"{family}.yaml")  # nc=80, as COCO-pretrained models are
    prune_model(y.model, prune=0.5)
    pt = save_checkpoint(y.model, tmp_path / "p.pt", {"task": y.task, "imgsz": 64})
    before = {k: v.shape for k, v in YOLO(str(pt)).model.state_dict().items()}
    add_pruning(YOLO(str(pt))).train(data=four_classes, epochs=2, project=str(tmp_path), name="nc", **TRAIN)
    best = YOLO(str(tmp_path / "nc" / "weights" / "best.pt")).model
    after = {k: v.shape for k, v in best.state_dict().items()}
    changed = sorted({k.rsplit(".", 1)[0] for k in before if after[k] != before[k]})
    n = {"yolo11n": 3, "yolo26n": 6, "yolo26n-seg": 7}[family]  # + YOLO26's one-to-one head, + its semantic head
    heads = ("cv3", "one2one_cv3", "proto")
    assert len(changed) == n and all(k.split(".")[2] in heads for k in changed), changed  # class outputs only
    assert all(after[f"{k}.weight"][0] == 4 for k in changed) and best.nc == 4 and len(best.names) == 4
    assert sum(p.numel() for p in best.parameters()) < 0.7 * sum(
        p.numel() for p in YOLO(f"{family}.yaml").model.parameters()
    )
    assert sum(f"rebuilt {n} class-output layers" in x and "nc=4" in x for x in log_lines) == 1


def test_watched_inputs_are_the_channels_the_consumer_keeps():
    """apply_plan_watching names the input channels a conv keeps: its new weight is the old one's kept columns."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_prune.engine.targets import plan_for_target
    from yolo_prune.engine.graph import prepare_model
    from yolo_prune.engine.plan import apply_plan_watching

    m = prepare_model(DetectionModel("yolo11n.yaml", nc=6, verbose=False))
    plan = plan_for_target(m, prune=0.5, imgsz=320)
    head = m.model[-1]
    names = [f"model.23.cv2.{i}.0.conv" for i in range(3)]
    old = [head.cv2[i][0].conv.weight.detach().clone() for i in range(3)]
    kept = apply_plan_watching(m, plan, tuple(names))
    for i, name in enumerate(names):
        new = head.cv2[i][0].conv.weight.detach()
        assert len(kept[name]) == new.shape[1] < old[i].shape[1]
        cols = old[i][:, kept[name]]  # each kept output row of the new conv is an old row restricted to kept inputs
        assert all(any(torch.equal(r, c) for c in cols) for r in new)


@pytest.mark.parametrize(("model", "data"), [("yolo11n-seg.yaml", "shapes-seg-8"), ("yolo26n-pose.yaml", "shapes-pose-8"),
                                             ("yolo11n-obb.yaml", "shapes-obb-8")])  # fmt: skip
def test_prune_distill_every_detection_task(tmp_path, model, data):
    m = add_pruning(YOLO(model), prune=0.3, prune_steps=1, prune_start=1, prune_distill=True)
    m.train(data=data, epochs=2, save_period=1, project=str(tmp_path), name="t", **TRAIN)
    w = tmp_path / "t" / "weights"
    assert all(a == b for a, b in _projector_widths(w / "epoch1.pt"))
    assert float(_rows(tmp_path / "t")[-1]["train/dis_loss"]) > 0
    best = YOLO(str(w / "best.pt")).model
    assert not hasattr(best, "teacher_model") and [h["step"] for h in best.prune_state["history"]] == [1]


def test_prune_distill_refuses_classify(tmp_path):
    m = add_pruning(YOLO("yolo11n-cls.yaml"), prune=0.3, prune_steps=1, prune_start=1, prune_distill=True)
    with pytest.raises(ValueError, match="prune_distill=True needs a detection head"):
        m.train(data="shapes-cls-8", epochs=2, project=str(tmp_path), name="c", **TRAIN)


@pytest.mark.parametrize("keys", [{"prune_method": "taylor"}, {"prune_mode": "unstructured"}])
def test_prune_distill_with_gradient_criteria_and_sparse_modes(tmp_path, tiny_data, keys, log_lines):
    m = add_pruning(YOLO("yolo11n.yaml"), prune=0.3, prune_steps=1, prune_start=1, prune_distill=True, **keys)
    m.train(data=tiny_data, epochs=2, dis=1.0, project=str(tmp_path), name="k", **TRAIN)
    assert not any("prune_distill with dis=" in x for x in log_lines)  # a chosen weight: no warning
    state = YOLO(str(tmp_path / "k" / "weights" / "best.pt")).model.prune_state
    assert [h["step"] for h in state["history"]] == [1] and float(_rows(tmp_path / "k")[-1]["train/dis_loss"]) > 0


def test_new_class_count_when_one2one_head_is_pruned_apart():
    """A global plan can leave YOLO26's one-to-one class branch wider than cv3: each gets a class conv of its own
    input width, and both forwards run with 4 classes."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_prune.engine.heads import set_class_count

    torch.manual_seed(0)
    m = DetectionModel("yolo26n.yaml", nc=80, verbose=False)
    with torch.no_grad():  # small one2one weights: the global ranking prunes that branch harder than cv3
        for p in m.model[-1].one2one_cv3.parameters():
            if p.ndim == 4:
                p.mul_(0.02)
    prune_model(m, prune=0.5, imgsz=128, prune_method="l2", prune_global=True)
    head = m.model[-1]
    widths = [(a[-1].in_channels, b[-1].in_channels) for a, b in zip(head.cv3, head.one2one_cv3)]
    assert any(a != b for a, b in widths)  # the case this test is about
    assert set_class_count(m, 4) == 6
    assert [(a[-1].in_channels, b[-1].in_channels) for a, b in zip(head.cv3, head.one2one_cv3)] == widths
    m.eval()
    out = m(torch.zeros(1, 3, 64, 64))
    assert out[0].shape[1] == 4 + 4  # (B, 4 box + 4 classes, anchors)
    m.train()
    preds = m(torch.zeros(1, 3, 64, 64))
    assert preds["one2one"]["scores"].shape[1] == preds["one2many"]["scores"].shape[1] == 4


@pytest.mark.parametrize("distill", [True, False])
def test_prune_distill_turns_compile_off_on_every_rank(tmp_path, monkeypatch, distill):
    """In DDP, on_pretrain_routine_start runs on rank 0 only: the trainer itself turns compile off for
    prune_distill, as Ultralytics does for distill_model on every rank (simulated: that callback does nothing)."""
    from ultralytics.utils import callbacks

    from yolo_prune.train.callbacks import PruneCallbacks
    from yolo_prune.train.trainers import PruneDetectionTrainer

    monkeypatch.setattr(PruneCallbacks, "on_pretrain_routine_start", lambda self, trainer: None)
    cbs = callbacks.get_default_callbacks()
    for event, fn in PruneCallbacks(prune=0.3, prune_distill=distill).callbacks.items():
        cbs[event].append(fn)
    args = {"model": "yolo11n.yaml", "data": "shapes-8", "compile": True, "project": str(tmp_path), **TRAIN}
    trainer = PruneDetectionTrainer(overrides=args, _callbacks=cbs)
    assert trainer.args.compile is (not distill)


def test_shipped_models_resolve_by_name_for_model_and_distill_model(tmp_path):
    """model= and distill_model= take a shipped model's name from any folder (Ultralytics would try a download)."""
    from yolo_prune.assets import ASSETS

    r = run_cli("train", "model=yolo11n-shapes.pt", "distill_model=yolo11n-shapes.pt", "data=shapes-8", "epochs=1",
                "imgsz=64", "batch=4", "workers=0", "plots=False", "val=False", f"project={tmp_path}", "name=s",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    args = yaml.safe_load((tmp_path / "s" / "args.yaml").read_text())
    assert args["model"] == args["distill_model"] == str(ASSETS / "yolo11n-shapes.pt")
    assert float(_rows(tmp_path / "s")[0]["train/dis_loss"]) > 0
