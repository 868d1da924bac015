"""Every task head of YOLOv8 / YOLO11 / YOLO26: pruned one-shot and again while training on the built-in data (the
session's ``matrix``), reloaded, validated, exported to ONNX with parity. One test per cell of the README's support
table (detection: test_trainer.py)."""

import pytest
import torch
from ultralytics import YOLO
from ultralytics.utils.torch_utils import get_flops

from yolo_prune.datasets import resolve_data
from yolo_prune.engine.graph import output_layers
from yolo_prune.deploy.export import export

from conftest import FAMILIES, TASKS
from yolo_prune.support import has


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
@pytest.mark.parametrize("task", [t for t in TASKS if t != "detect"])
def test_task_prunes_trains_reloads_validates_exports(matrix, family, task):
    cell = matrix[f"{family}-{task}"]
    base = cell["base"]
    x = torch.rand(1, 3, 64, 64)
    base_out = outputs(base, x)
    last = cell["last"]  # one-shot 50%, then 50% again while training one epoch from the pruned.pt
    pruned = YOLO(str(last))  # reload in a fresh wrapper: the pruned shapes come back
    assert pruned.task == task
    assert 0.70 <= 1 - get_flops(pruned.model, 640) / cell["base_flops"] <= 0.80  # 1 - 0.5 * 0.5, both kept
    assert outputs(pruned.model, x) == base_out  # masks, prototypes, keypoints, angles, classes: same outputs
    width = lambda m: m.out_channels if isinstance(m, torch.nn.Conv2d) else getattr(m, "out_features", None)  # noqa: E731
    kept = [width(m) for m in output_layers(pruned.model)]
    assert any(kept) and kept == [width(m) for m in output_layers(base)]  # output convs keep their width
    if task == "segment" and family == "yolo26n":  # Proto26's train-only semantic branch still runs after the prune
        assert (
            pruned.model.model[-1].proto.semseg[0].conv.in_channels
            == pruned.model.model[-1].proto.feat_fuse.conv.in_channels
        )
    data = resolve_data("shapes-8", pruned.task)  # the built-in set of this task: shapes-seg-8, shapes-cls-8, ...
    metrics = YOLO(str(last)).val(data=data, imgsz=64, batch=4, plots=False, workers=0)
    assert 0.0 <= metrics.fitness <= 1.0  # a number from a validation that ran, not a skipped one
    if family == "yolo26n" and not has("yolo26 export"):  # everything above ran; the parity check is gated
        pytest.skip("YOLO26 export parity needs ultralytics>=8.4.142")
    res = export(str(last), format="onnx", imgsz=64)
    assert res["max_abs_diff"] <= 1e-3
