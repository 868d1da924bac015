"""Engine API used by the trainer: plans replay on copies (EMA, other ranks), criteria are pluggable."""

import copy

import pytest
import torch
from ultralytics import YOLO
from ultralytics.utils.torch_utils import get_flops

from yolo_prune.cfg import PruneError
from yolo_prune.engine.pruner import ChannelPruner
from yolo_prune.engine.plan import apply_plan, kept_channels
from yolo_prune.engine.graph import check_supported, prepare_model
from yolo_prune.engine.targets import plan_for_target
from yolo_prune.engine.importance import IMPORTANCES, register, unregister


def test_plan_replays_identically_on_a_copy():
    """The trainer prunes the live model and its EMA with one plan: both end with the same shapes."""
    model = YOLO("yolo26n.yaml").model
    prepare_model(model)
    ema = copy.deepcopy(model)
    with torch.no_grad():  # the EMA has different weights; the plan must not depend on them
        for p in ema.parameters():
            p.mul_(0.5)
    plan = plan_for_target(model, prune=0.4, imgsz=320)
    apply_plan(model, plan)
    apply_plan(ema, plan)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ema.state_dict().items()}
    assert 0.57 <= plan.est_flops_fraction <= 0.63 and 0.15 < plan.ratio < 0.35  # ~1-(1-r)^2 of GFLOPs


def test_trained_checkpoint_prunes_in_python(trained_pt):
    yolo = YOLO(str(trained_pt))
    base = get_flops(yolo.model, 640)
    from yolo_prune.engine.targets import prune_model

    prune_model(yolo.model, prune=0.5)
    assert 0.47 <= 1 - get_flops(yolo.model, 640) / base <= 0.53


def test_criteria_choose_differently_and_register():
    model = YOLO("yolo11n.yaml").model
    prepare_model(model)
    plans = {m: ChannelPruner(model, prune_method=m, prune_round=8).plan(ratio=0.5) for m in ("l1", "l2")}
    assert [n for n, _ in plans["l1"].groups] == [n for n, _ in plans["l2"].groups]  # same groups, same counts
    assert plans["l1"].n_channels == plans["l2"].n_channels
    assert plans["l1"].groups != plans["l2"].groups  # but not the same channels
    register(
        "first_channels", lambda: lambda group: torch.arange(len(group[0].dep.target.module.weight), dtype=torch.float)
    )
    try:
        plan = ChannelPruner(model, prune_method="first_channels", prune_round=8).plan(ratio=0.5)
        assert dict(plan.groups)["model.0.conv"] == list(range(8))
    finally:
        unregister("first_channels")
    assert "first_channels" not in IMPORTANCES


@pytest.mark.parametrize(
    "c, r, k, want", [(64, 0.5, 8, 32), (16, 0.3, 8, 8), (8, 0.9, 8, 8), (100, 0.5, 8, 48), (24, 0.0, 8, 24)]
)
def test_kept_channels_rounding(c, r, k, want):
    assert kept_channels(c, r, k) == want


def test_unsupported_model_is_refused():
    with pytest.raises(PruneError, match="supported: YOLOv8"):
        check_supported(YOLO("yolov10n.yaml").model)  # v10Detect: a head the engine does not know


def test_prune_leaves_batchnorm_statistics_of_kept_channels_untouched():
    """The post-prune forward check must not update BN running stats (it would degrade a trained model)."""
    from yolo_prune.engine.targets import prune_model

    model = YOLO("yolo11n.yaml").model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    bn = model.model[0].bn
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    plan = prune_model(model, prune_ratio=0.3, prune_round=8)  # round 8: the 16-channel first conv is prunable
    kept = [i for i in range(len(mean)) if i not in dict(plan.groups)["model.0.conv"]]
    assert len(kept) < len(mean)
    assert torch.equal(model.model[0].bn.running_mean, mean[kept])
    assert torch.equal(model.model[0].bn.running_var, var[kept])
