"""Issue #12: pruned models hold one ``cv1`` conv per block, as Ultralytics' own classes, and load without yolo-prune.

The stock-load matrix runs every family x task through one-shot pruning and a pruning training run, then loads,
validates, predicts and exports all checkpoints in ONE fresh interpreter where ``import yolo_prune`` fails and
``ULTRALYTICS_SAFE_LOAD=1`` allows only Ultralytics' and torch's classes.
"""

import copy
import inspect
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.modules.block import C2PSA, C2f, C3k2
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import get_flops

from yolo_prune import add_pruning
from yolo_prune.engine.blocks import C2fFolded, C2fSplit, C2PSAFolded, C2PSASplit, needs_yolo_prune
from yolo_prune.checkpoint import save_checkpoint
from yolo_prune.datasets import resolve_data
from yolo_prune.engine.plan import _apply
from yolo_prune.engine.graph import build_graph, prepare_model
from yolo_prune.engine.targets import prune_model
from yolo_prune.modes.oneshot import prune_file
from yolo_prune.train.trainers import is_pruned

from conftest import FAMILIES, TASKS, task_model

TRAIN = {"epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "plots": False}
YOLO_PRUNE_CLASSES = (C2fSplit, C2PSASplit, C2fFolded, C2PSAFolded)


def flat_outputs(model, x):
    """Every eval-mode output tensor of ``model`` (fp32) for input ``x``, as numpy arrays in a fixed order."""
    import torch as _torch  # this function also runs, as source, in the stock-load subprocess

    model = model.float().eval()
    with _torch.no_grad():
        y = model(x)
    found = []

    def walk(v):
        if isinstance(v, _torch.Tensor):
            found.append(v.numpy())
        elif isinstance(v, (list, tuple)):
            for t in v:
                walk(t)
        elif isinstance(v, dict):
            for k in sorted(v):
                if k != "feats":
                    walk(v[k])

    walk(y)
    return found


def stock_blocks(model) -> list:
    return [m for m in model.modules() if isinstance(m, (C2f, C2PSA))]


@pytest.fixture(scope="module")
def pruned_detect():
    """Per family: (unpruned model, model pruned 50% by prune_model, the same plan applied without folding)."""
    out = {}
    for family in FAMILIES:
        base = YOLO(f"{family}.yaml").model
        with torch.no_grad():  # BN statistics and scales off their init values, so folding them is really tested
            for m in base.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-1, 1)
                    m.running_var.uniform_(0.5, 2)
                    m.weight.uniform_(0.2, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
        for p in base.model[2].parameters():
            p.requires_grad_(False)  # a frozen layer must stay frozen through split, prune and fold
        pruned = copy.deepcopy(base)
        plan = prune_model(pruned, prune=0.5)
        split = prepare_model(copy.deepcopy(base))
        _apply(split, build_graph(split), plan)  # pruned, still two convs per block
        out[family] = (base, pruned, split)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_fold_matches_split_and_gives_ultralytics_classes(pruned_detect, family):
    base, pruned, split = pruned_detect[family]
    assert any(isinstance(m, (C2fSplit, C2PSASplit)) for m in split.modules())
    assert not any(isinstance(m, YOLO_PRUNE_CLASSES) for m in pruned.modules()) and not needs_yolo_prune(pruned)
    before, after = stock_blocks(base), stock_blocks(pruned)
    assert [type(m) for m in after] == [type(m) for m in before]  # C2f / C3k2 / C2PSA, one per original block
    assert all(type(m).__module__ == "ultralytics.nn.modules.block" for m in after)
    assert any(a.c < b.c for a, b in zip(after, before))  # really pruned
    x = torch.rand(2, 3, 64, 64)
    for m in after:
        assert m.cv1.conv.out_channels == m.cv1.bn.num_features == 2 * m.c  # chunk(2) gives (c, c)
        for attr in ("i", "f", "type", "np"):
            assert hasattr(m, attr)
        if isinstance(m, C2f):
            feat = torch.rand(1, m.cv1.conv.in_channels, 8, 8)
            m.eval()
            assert torch.equal(m.forward_split(feat), m.forward(feat))  # what the exporter calls
    ref = flat_outputs(split, x)
    got = flat_outputs(pruned, x)
    assert len(ref) == len(got) and all(np.abs(a - b).max() <= 1e-5 for a, b in zip(ref, got))
    frozen = {n for n, p in pruned.named_parameters() if not p.requires_grad}
    assert "model.2.cv1.conv.weight" in frozen  # the folded conv of a frozen layer
    assert frozen == {n for n, _ in pruned.named_parameters() if n.startswith("model.2.") or ".dfl." in n}
    copy.deepcopy(pruned).train()(x)  # the training forward runs on the folded blocks


def test_planner_moves_split_halves_in_lockstep(tmp_path):
    """Uniform ratio, GFLOPs target (with its one-unit-at-a-time gap closing), sensitivity allocation and global
    ranking all remove the same count from a block's two halves, and none from a half whose partner cannot be pruned
    (it feeds attention)."""
    from yolo_prune.engine.pruner import ChannelPruner
    from yolo_prune.engine.allocate import removed_for_target

    model = prepare_model(YOLO("yolo26n.yaml").model)
    pruner = ChannelPruner(model, prune_round=8)
    ranked = ChannelPruner(model, prune_round=8, prune_global=True)
    assert len(pruner.pairs) == sum(isinstance(m, (C2fSplit, C2PSASplit)) for m in model.modules())
    assert any(None in pair for pair in pruner.pairs)  # C2PSA and the attention C3k2: cv1 half feeds Attention
    assert ranked.pairs == pruner.pairs
    table = tmp_path / "sensitivity.csv"
    rows = [f"{k},{r},{0.01 * (k % 5 + 1) * r}" for k in pruner.layer_keys() for r in (0.25, 0.5, 0.75)]
    table.write_text("layer,ratio,drop\nnone,0,0\n" + "\n".join(rows) + "\n")
    plans = {
        "ratio": (pruner, pruner.plan(ratio=0.5)),
        "flops": (pruner, pruner.plan(flops_fraction=0.5)),
        "sensitivity": (pruner, pruner.plan_removed(removed_for_target(pruner, table, 0.5))),
        "global ratio": (ranked, ranked.plan(ratio=0.4)),
        "global flops": (ranked, ranked.plan(flops_fraction=0.5)),
    }
    for how, (p, plan) in plans.items():
        removed = {name: len(idxs) for name, idxs in plan.groups}
        counts = [[removed.get(p.groups[g][0], 0) if g is not None else None for g in pair] for pair in p.pairs]
        assert any(c[0] for c in counts), how  # halves were pruned at all
        for c in counts:
            assert c[0] == c[1] or (None in c and not any(c[i] for i in (0, 1) if c[i] is not None)), (how, c)
    # the ranking moves the halves itself: its raw allocation is already locked (plan_removed's lock drops nothing)
    for raw in (ranked.removed_global(ratio=0.4), ranked.removed_global(flops_fraction=0.5)):
        assert raw == ranked.lock(raw) and any(raw[g] for pair in ranked.pairs if None not in pair for g in pair)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_has_as_many_convs_as_unpruned(tmp_path, pruned_detect, family):
    """Folding leaves no extra conv: the pruned ONNX graph has the unpruned graph's Conv node count."""
    base, pruned, _ = pruned_detect[family]
    counts = []
    for name, model in (("base", base), ("pruned", pruned)):
        pt = save_checkpoint(model, tmp_path / f"{name}.pt", {"task": "detect", "imgsz": 64})
        file = YOLO(str(pt)).export(format="onnx", imgsz=64)
        counts.append(sum(n.op_type == "Conv" for n in onnx.load(file).graph.node))
    assert counts[0] == counts[1] > 0


def test_unequal_halves_fold_to_yolo_prune_class(tmp_path, pruned_detect):
    """prune_layers on one half of a block prunes the halves differently: one folded conv of a yolo-prune class,
    listed in the summary and named in one log line (prune_global keeps the halves equal: nothing folds)."""
    base, _, _ = pruned_detect["yolo11n"]
    src = save_checkpoint(base, tmp_path / "base.pt", {"task": "detect", "imgsz": 64})
    ranked = prune_file(src, imgsz=64, project=tmp_path, name="r", prune=0.5, prune_global=True, prune_round=8)
    prune_file(src, imgsz=64, project=tmp_path, name="u", prune=0.5, prune_round=8)
    assert ranked["needs_yolo_prune"] == []
    widths = {  # ranked: other widths than one ratio, in Ultralytics' and torch's classes only (stock-loadable)
        n: [m.out_channels for m in YOLO(str(tmp_path / n / "weights" / "pruned.pt")).model.modules()
            if isinstance(m, torch.nn.Conv2d)]
        for n in ("r", "u")
    }  # fmt: skip
    assert len(widths["r"]) == len(widths["u"]) and widths["r"] != widths["u"]
    assert all(type(m).__module__.split(".")[0] in {"ultralytics", "torch"} for m in YOLO(
        str(tmp_path / "r" / "weights" / "pruned.pt")).model.modules())  # fmt: skip
    layers = {"model.6.cv0": 0.5}
    s = prune_file(src, imgsz=64, project=tmp_path, name="g", prune=0.5, prune_layers=layers, prune_round=8)
    assert s["needs_yolo_prune"] == ["model.6"] and json.loads((tmp_path / "g" / "prune_summary.json").read_text()) == {
        k: v for k, v in s.items() if k != "save_dir"
    }
    model = YOLO(str(tmp_path / "g" / "weights" / "pruned.pt")).model
    folded = {n: m for n, m in model.named_modules() if isinstance(m, (C2fFolded, C2PSAFolded))}
    assert sorted(folded) == s["needs_yolo_prune"]
    assert all(m.c0 != m.c1 and m.cv1.conv.out_channels == m.c0 + m.c1 for m in folded.values())
    assert model.model[6].base is C3k2 and model.model[6].c0 < model.model[6].c1
    assert not isinstance(next(iter(folded.values())), (C2f, C2PSA))  # the exporter must not patch it
    assert not any(isinstance(m, (C2fSplit, C2PSASplit)) for m in model.modules())
    split = prepare_model(copy.deepcopy(model))  # re-split for the next prune: same outputs
    x = torch.rand(2, 3, 64, 64)
    assert all(np.abs(a - b).max() <= 1e-5 for a, b in zip(flat_outputs(split, x), flat_outputs(model, x)))
    from yolo_prune.engine.pruner import ChannelPruner

    again = ChannelPruner(split, prune_round=8)  # its unequal halves are not paired: each keeps its own rounding
    halves = [again.groups[g][0] for pair in again.pairs for g in pair if g is not None]
    assert len(again.pairs) == sum(isinstance(m, (C2fSplit, C2PSASplit)) for m in split.modules()) - 1
    assert halves and not any(n.startswith(("model.6.cv0", "model.6.cv1")) for n in halves)

    # the Python entry: only that block differs; a whole-layer ratio on C2PSA (whose other half feeds attention)
    # is applied to the half it can prune, not dropped to keep the halves equal
    net = copy.deepcopy(base)
    prune_model(net, prune_layers=layers, prune_round=8)
    assert needs_yolo_prune(net) == ["model.6"] and isinstance(net.model[6], C2fFolded)
    net = copy.deepcopy(base)
    c0 = net.model[10].cv1.conv.out_channels // 2
    prune_model(net, prune_layers={10: 0.5}, prune_round=8)
    assert needs_yolo_prune(net) == ["model.10"] and net.model[10].c0 < c0 == net.model[10].c1

    ratios = tmp_path / "ratios.yaml"
    ratios.write_text("model.6.cv0: 0.5\n")
    r = subprocess.run(
        [sys.executable, "-m", "yolo_prune", "prune", f"model={src}", "prune=0.5", f"prune_layers={ratios}"]
        + ["prune_round=8", "imgsz=64", f"project={tmp_path}", "name=cli"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "needs yolo-prune" in ln]
    assert len(lines) == 1 and lines[0].split(" blocks ")[1].split(" have ")[0].split(", ") == s["needs_yolo_prune"]


def test_default_prune_needs_no_plugin_and_logs_nothing(tmp_path, pruned_detect):
    base, _, _ = pruned_detect["yolo26n"]
    src = save_checkpoint(base, tmp_path / "base.pt", {"task": "detect", "imgsz": 64})
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # Ultralytics' LOGGER does not propagate to caplog
    LOGGER.addHandler(handler)
    try:
        s = prune_file(src, imgsz=64, project=tmp_path, name="d", prune=0.5)
    finally:
        LOGGER.removeHandler(handler)
    assert s["needs_yolo_prune"] == [] and records and not any("needs yolo-prune" in r for r in records)
    for mode in ("unstructured", "2:4"):  # weights zeroed in place: the checkpoint keeps Ultralytics' blocks too
        s = prune_file(src, imgsz=64, project=tmp_path, name=mode.replace(":", "_"), prune_mode=mode, prune=0.5)
        model = YOLO(str(Path(s["save_dir"]) / "weights" / "pruned.pt")).model
        assert s["needs_yolo_prune"] == [] and not needs_yolo_prune(model)
        assert len(stock_blocks(model)) == len(stock_blocks(base))


def test_is_pruned_by_shapes_and_trainer_keeps_one_shot_widths(tmp_path):
    """A one-shot pruned.pt holds only Ultralytics classes; the trainer must still see it is pruned and not rebuild it
    from model.yaml (which would silently train the original size)."""
    for family, task in (("yolo11n", "detect"), ("yolo26n", "pose"), ("yolov8n", "classify")):
        yolo = task_model(family, task)
        pt = save_checkpoint(yolo.model, tmp_path / f"{family}-{task}.pt", {"task": task, "imgsz": 64})
        assert not is_pruned(YOLO(str(pt)).model)  # unpruned, any nc / keypoints: the stock rebuild is right
    src = tmp_path / "yolo11n-detect.pt"
    s = prune_file(src, imgsz=64, project=tmp_path, name="p", prune=0.5)
    pruned = Path(s["save_dir"]) / "weights" / "pruned.pt"
    model = YOLO(str(pruned))
    del model.model.prune_state  # as a pruned checkpoint from elsewhere would come: the shapes alone must tell
    assert is_pruned(model.model) and not needs_yolo_prune(model.model)
    params = sum(p.numel() for p in model.model.parameters())
    add_pruning(model)  # no prune keys: only the trainer that keeps pruned shapes
    model.train(data="shapes-8", project=str(tmp_path), name="t", val=False, **TRAIN)
    last = YOLO(str(tmp_path / "t" / "weights" / "last.pt")).model
    assert sum(p.numel() for p in last.parameters()) == params == s["params_after"]


# Runs in a fresh interpreter: no yolo_prune, only Ultralytics' and torch's classes may load.
STOCK_LOAD = r"""
import json, os, sys
sys.modules["yolo_prune"] = None  # any reference to yolo-prune in a checkpoint now fails
assert os.environ["ULTRALYTICS_SAFE_LOAD"] == "1"
import numpy as np, torch
from ultralytics import YOLO
{flat_outputs}
cases = json.load(open(sys.argv[1]))
x = torch.from_numpy(np.load(cases["input"]))
report = {{}}
for c in cases["checkpoints"]:
    try:
        import yolo_prune
    except ImportError:
        pass
    else:
        raise SystemExit("yolo_prune is importable")
    pt, out = c["pt"], {{}}
    out["val"] = YOLO(pt).val(data=c["data"], imgsz=64, batch=4, workers=0, plots=False).fitness is not None
    out["predict"] = len(YOLO(pt).predict(c["image"], imgsz=64, save=False, verbose=False)) == 1
    out["onnx"] = os.path.isfile(YOLO(pt).export(format="onnx", imgsz=64))
    got, ref = flat_outputs(YOLO(pt).model, x), np.load(c["ref"])
    ref = [ref[f"arr_{{i}}"] for i in range(len(ref.files))]
    out["n_outputs"] = [len(got), len(ref)]
    out["max_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(got, ref))
    report[pt] = out
print("REPORT " + json.dumps(report))
"""


def first_image(data: str) -> str:
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    return str(next(p for p in sorted(root.rglob("*")) if p.suffix.lower() in {".jpg", ".png"}))


def test_stock_ultralytics_loads_every_pruned_checkpoint(tmp_path, matrix):
    """Every family x task: a one-shot pruned.pt and a pruning run's best.pt (trained on from that pruned.pt with
    another prune=0.5, which also proves the trainer kept the one-shot widths) load, validate, predict, export and
    compute the same outputs under plain Ultralytics with ULTRALYTICS_SAFE_LOAD=1."""
    t0 = time.perf_counter()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    cases = []
    for cell, c in matrix.items():
        assert c["summary"]["needs_yolo_prune"] == []
        oneshot, best = c["oneshot"], c["best"]
        kept = get_flops(YOLO(str(best)).model, 640) / c["base_flops"]
        assert 0.2 <= kept <= 0.3, (cell, kept)  # 50% of the one-shot model's 50%: the widths were kept
        data = resolve_data("shapes-8", c["task"])
        for pt in (oneshot, best):
            net = YOLO(str(pt)).model
            assert not needs_yolo_prune(net) and all(
                type(m).__module__.split(".")[0] in {"ultralytics", "torch"} for m in net.modules()
            )
            ref = tmp_path / f"{cell}-{pt.stem}.ref.npz"
            np.savez(ref, *flat_outputs(net, x))
            cases.append({"pt": str(pt), "data": str(data), "image": first_image(str(data)), "ref": str(ref)})
    prepared = time.perf_counter() - t0
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps({"input": str(tmp_path / "x.npy"), "checkpoints": cases}))
    script = STOCK_LOAD.format(flat_outputs=inspect.getsource(flat_outputs))
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1", "YOLO_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", script, str(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=1800,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("REPORT "))[7:])
    assert sorted(report) == sorted(c["pt"] for c in cases) and len(report) == 2 * len(FAMILIES) * len(TASKS)
    for pt, out in report.items():
        assert out["val"] and out["predict"] and out["onnx"], (pt, out)
        assert out["n_outputs"][0] == out["n_outputs"][1] > 0 and out["max_diff"] <= 1e-5, (pt, out)
    print(f"stock-load matrix: prepare {prepared:.0f}s, subprocess {time.perf_counter() - t0 - prepared:.0f}s")
