"""One regression test per engine trap in shared/notes/ultralytics-pruning-traps.md (items 1-8)."""

import copy
import io

import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.modules.block import C2PSA, Attention, C2f
from ultralytics.utils.torch_utils import get_flops

from yolo_prune.engine.blocks import C2fFolded, C2fSplit, C2PSASplit
from yolo_prune.checkpoint import save_checkpoint
from yolo_prune.engine.pruner import ChannelPruner
from yolo_prune.engine.plan import PrunePlan, apply_plan
from yolo_prune.engine.graph import build_graph, match_layer, prepare_model
from yolo_prune.engine.targets import prune_model
from yolo_prune.deploy.export import onnx_parity

X = torch.rand(2, 3, 64, 64)


def net(cfg: str):
    return YOLO(cfg).model


def eval_out(model, x=X):
    model.eval()
    with torch.no_grad():
        return model(x)[0]


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_trap1_split_blocks_replace_chunk_exactly(cfg):
    """C2f/C3k2/C2PSA chunk/split -> two convs while pruning; outputs identical; halves pruned to different widths fold
    to a yolo-prune class, equal halves back to Ultralytics' own."""
    model = net(cfg)
    ref = eval_out(model)
    n_stock = sum(isinstance(m, (C2f, C2PSA)) for m in model.modules())
    prepare_model(model)
    assert n_stock > 0
    assert not any(isinstance(m, (C2f, C2PSA)) for m in model.modules())
    assert sum(isinstance(m, (C2fSplit, C2PSASplit)) for m in model.modules()) == n_stock
    assert torch.equal(eval_out(model), ref)
    name, block = next((n, m) for n, m in model.named_modules() if isinstance(m, C2fSplit))
    c, base = block.c, block.base
    apply_plan(model, PrunePlan(groups=[(f"{name}.cv0.conv", list(range(8)))]))  # prune one half only
    block = model.get_submodule(name)
    assert type(block) is C2fFolded and block.base is base
    assert (block.c0, block.c1, block.cv1.conv.out_channels) == (c - 8, c, 2 * c - 8)
    assert block.cv2.conv.in_channels == (2 + len(block.m)) * c - 8
    assert not any(isinstance(m, (C2fSplit, C2PSASplit)) for m in model.modules())  # folded after the prune
    model.train()
    model(X)
    assert eval_out(model).shape == ref.shape
    pruner = ChannelPruner(prepare_model(model))
    split = model.get_submodule(name)
    owner = pruner.owners()
    g0, g1 = owner[split.cv0.conv], owner[split.cv1.conv]  # the groups owning the block's cv0 and cv1 channels
    assert pruner.groups[g0][0] == f"{name}.cv0.conv" and match_layer(pruner.groups[g1][0], name)
    assert not any(g in pair for pair in pruner.pairs for g in (g0, g1))  # halves differ: not locked together
    cv1_root = pruner.groups[g1][0]
    apply_plan(model, PrunePlan(groups=[(cv1_root, list(range(8)))]))  # the other half catches up: equal again
    block = model.get_submodule(name)
    assert type(block) is base and block.c == c - 8 and block.cv1.conv.out_channels == 2 * c - 16
    model.train()
    model(X)
    assert eval_out(model).shape == ref.shape


def test_trap2_pruned_model_survives_deepcopy_and_save():
    """No instance-patched forwards; deepcopy (ModelEMA) and torch.save/load round-trip with identical outputs."""
    model = net("yolo11n.yaml")
    prune_model(model, prune=0.5)
    assert not any("forward" in vars(m) for m in model.modules())
    assert all(type(m).__module__ != "__main__" for m in model.modules())
    assert all(type(m).__module__.split(".")[0] in {"ultralytics", "torch"} for m in model.modules())  # trap 20
    ref = eval_out(model)
    assert torch.equal(eval_out(copy.deepcopy(model)), ref)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert torch.equal(eval_out(torch.load(buf, weights_only=False)), ref)


def test_trap3_exporter_forward_split_keeps_unequal_halves(tmp_path):
    """The exporter swaps in forward_split on C2f instances; with unequal halves the ONNX must still match PyTorch."""
    model = net("yolo11n.yaml")
    prepare_model(model)
    name = next(n for n, m in model.named_modules() if isinstance(m, C2fSplit))
    apply_plan(model, PrunePlan(groups=[(f"{name}.cv0.conv", list(range(8)))]))
    block = model.get_submodule(name)
    assert isinstance(block, C2fFolded) and not isinstance(block, C2f)  # so Exporter does not patch it
    pt = save_checkpoint(model, tmp_path / "half.pt", {"task": "detect", "imgsz": 64})
    onnx = YOLO(str(pt)).export(format="onnx", imgsz=64)
    assert onnx_parity(pt, onnx, imgsz=64) <= 1e-3


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", "yolo26n.yaml"])
def test_trap4_attention_is_opaque_and_intact(cfg):
    """Attention is traced as one node (no walk through view/split) and keeps its width and head layout."""
    model = net(cfg)
    prepare_model(model)
    attn = [m for m in model.modules() if isinstance(m, Attention)]
    before = [(a.qkv.conv.weight.shape, a.proj.conv.weight.shape, a.pe.conv.weight.shape, a.num_heads) for a in attn]
    graph = build_graph(model)
    assert all(a in graph.module2node and a.qkv.conv not in graph.module2node for a in attn)
    prune_model(model, prune=0.5)
    after = [(a.qkv.conv.weight.shape, a.proj.conv.weight.shape, a.pe.conv.weight.shape, a.num_heads) for a in attn]
    assert before == after
    model.eval()
    model(torch.rand(1, 3, 96, 96))  # a size other than the trace size: attention reshapes must still agree


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", "yolo26n.yaml"])
def test_trap5_head_final_convs_keep_outputs(cfg):
    """Only the last conv of each head branch and the DFL keep their channels; hidden head widths are pruned."""
    model = net(cfg)
    head = model.model[-1]
    branches = [a for a in ("cv2", "cv3", "one2one_cv2", "one2one_cv3") if getattr(head, a, None) is not None]
    final = {a: [s[-1].out_channels for s in getattr(head, a)] for a in branches}
    hidden = {
        a: [
            s[0][-1].conv.out_channels if isinstance(s[0], torch.nn.Sequential) else s[0].conv.out_channels
            for s in getattr(head, a)
        ]
        for a in branches
    }
    prune_model(model, prune=0.5, prune_round=8)  # nano head widths are 16-64
    assert {a: [s[-1].out_channels for s in getattr(head, a)] for a in branches} == final
    assert final["cv2"] == [4 * head.reg_max] * head.nl and final["cv3"] == [head.nc] * head.nl
    hidden_after = {
        a: [
            s[0][-1].conv.out_channels if isinstance(s[0], torch.nn.Sequential) else s[0].conv.out_channels
            for s in getattr(head, a)
        ]
        for a in branches
    }
    assert all(sum(hidden_after[a]) < sum(hidden[a]) for a in branches)
    assert eval_out(model).shape[1] == 4 + head.nc


def test_trap6_yolo26_one2one_pruned_consistently_and_both_modes_run():
    """YOLO26 detaches one2one inputs in train mode; the eval trace must still prune both heads so train() runs."""
    model = net("yolo26n.yaml")
    head = model.model[-1]
    prune_model(model, prune=0.5)
    for branch in ("cv2", "one2one_cv2"):  # each branch's first conv reads the (pruned) neck output
        for i, seq in enumerate(getattr(head, branch)):
            assert seq[0].conv.in_channels == model.model[head.f[i]].cv2.conv.out_channels
    model.train()
    out = model(X)
    assert set(out) == {"one2many", "one2one"}
    assert out["one2one"]["scores"].shape == out["one2many"]["scores"].shape == (2, head.nc, 84)
    assert eval_out(model).shape[0] == 2


def test_trap7_frozen_parameters_are_pruned_and_stay_frozen():
    """Frozen params (.dfl, frozen layers) are invisible to the tracer unless grads are enabled for the trace."""
    model = net("yolo11n.yaml")
    frozen = {n for n, p in model.named_parameters() if n.startswith("model.0.") or ".dfl" in n}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    c0 = model.model[0].conv.out_channels
    prune_model(model, prune=0.5, prune_round=8)  # round 16 would keep the 16-channel conv
    assert model.model[0].conv.out_channels < c0  # the frozen first conv was pruned with its consumers
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    model.train()
    model(X)


def test_trap8_prune_targets_gflops_not_channel_ratio():
    """prune=0.5 removes ~half the GFLOPs; the same per-layer channel ratio removes about three quarters."""
    a, b = net("yolo11n.yaml"), net("yolo11n.yaml")
    base = get_flops(a, 640)
    prune_model(a, prune=0.5)
    prune_model(b, prune_ratio=0.5)
    assert 0.47 <= 1 - get_flops(a, 640) / base <= 0.53
    assert 0.65 <= 1 - get_flops(b, 640) / base <= 0.8


def test_trap_pruner_estimate_tracks_real_flops():
    """The analytic GFLOPs model used for targeting agrees with Ultralytics' counter within 3 points."""
    model = net("yolo11n.yaml")
    prepare_model(model)
    base = get_flops(model, 640)
    pruner = ChannelPruner(model, prune_round=8)
    plan = pruner.plan(flops_fraction=0.6)
    apply_plan(model, plan)
    assert abs(get_flops(model, 640) / base - plan.est_flops_fraction) <= 0.03
