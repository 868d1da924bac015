"""Every task head of YOLOv8 / YOLO11 / YOLO26: prune 50% of GFLOPs while training on the built-in data, reload,
validate, export to ONNX with parity. One test per cell of the README's support table (detection: test_trainer.py)."""

import pytest
import torch
from ultralytics import YOLO
from ultralytics.utils.torch_utils import get_flops

from yolo_prune import add_pruning
from yolo_prune.datasets import resolve_data
from yolo_prune.engine.graph import output_layers
from yolo_prune.deploy.export import export

FAMILIES = ("yolov8n", "yolo11n", "yolo26n")
TASKS = ("seg", "pose", "obb", "cls")


def outputs(model, x):
    """Shapes of every eval-mode output tensor (the task's outputs: boxes, masks, keypoints, angles, classes)."""
    model = model.float().eval()
    with torch.no_grad():
        y = model(x)
    found = []

    def walk(v):
        if isinstance(v, torch.Tensor):
            found.append(tuple(v.shape))
        elif isinstance(v, (list, tuple)):
            for t in v:
                walk(t)
        elif isinstance(v, dict):
            for k, t in v.items():
                if k != "feats":
                    walk(t)

    walk(y)
    return found


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", TASKS)
def test_task_prunes_trains_reloads_validates_exports(tmp_path, family, task):
    cfg = f"{family}-{task}.yaml"
    base = YOLO(cfg)
    extra = {"data_kpt_shape": (5, 3)} if task == "pose" else {}  # the built-in pose data: 5 keypoints (x, y, v)
    base.model = type(base.model)(cfg, nc=6, verbose=False, **extra)  # as training on the built-in data builds it
    base_flops = get_flops(base.model, 640)
    x = torch.rand(1, 3, 64, 64)
    base_out = outputs(base.model, x)

    model = add_pruning(YOLO(cfg), prune=0.5, prune_steps=1, prune_start=0)  # prune at the start, train one epoch
    model.train(data="shapes-8", epochs=1, imgsz=64, batch=4, workers=0, plots=False, project=str(tmp_path), name="t")

    last = tmp_path / "t" / "weights" / "last.pt"
    pruned = YOLO(str(last))  # reload in a fresh wrapper: the pruned shapes come back
    assert pruned.task == base.task
    assert 0.45 <= 1 - get_flops(pruned.model, 640) / base_flops <= 0.55
    assert outputs(pruned.model, x) == base_out  # masks, prototypes, keypoints, angles, classes: same outputs
    width = lambda m: m.out_channels if isinstance(m, torch.nn.Conv2d) else getattr(m, "out_features", None)  # noqa: E731
    kept = [width(m) for m in output_layers(pruned.model)]
    assert any(kept) and kept == [width(m) for m in output_layers(base.model)]  # output convs keep their width
    if task == "seg" and family == "yolo26n":  # Proto26's train-only semantic branch still runs after the prune
        assert (
            pruned.model.model[-1].proto.semseg[0].conv.in_channels
            == pruned.model.model[-1].proto.feat_fuse.conv.in_channels
        )
    data = resolve_data("shapes-8", pruned.task)  # the built-in set of this task: shapes-seg-8, shapes-cls-8, ...
    metrics = YOLO(str(last)).val(data=data, imgsz=64, batch=4, plots=False, workers=0)
    assert 0.0 <= metrics.fitness <= 1.0  # a number from a validation that ran, not a skipped one
    res = export(str(last), format="onnx", imgsz=64)
    assert res["max_abs_diff"] <= 1e-3
