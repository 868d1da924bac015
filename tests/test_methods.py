"""Pruning methods: criteria choose different channels, sparsity shrinks scales, global / per-layer control,
sensitivity analysis, unstructured and 2:4 sparsity."""

import csv
import json

import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from conftest import run_cli
from yolo_prune.train.callbacks import PruneCallbacks
from yolo_prune.cfg import PruneError
from yolo_prune.datasets import calibration_batches
from yolo_prune.engine.pruner import ChannelPruner, layer_widths
from yolo_prune.engine.targets import detection_loss, plan_for_target, prune_model
from yolo_prune.engine.graph import prepare_model
from yolo_prune.engine.importance import GRADIENT_METHODS, accumulate_gradients
from yolo_prune.engine.sparsity import BNSparsity, penalised_norms
from yolo_prune.engine.unstructured import eligible_layers, sparsity

TRAIN = ["data=shapes-8", "imgsz=64", "batch=4", "workers=0", "plots=False"]


@pytest.fixture(scope="module")
def model(tiny_data):
    """yolo11n with spread-out weights and BN scales (a fresh init has all BN scales at 1), gradients accumulated."""
    m = DetectionModel("yolo11n.yaml", nc=6, verbose=False)
    prepare_model(m)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.weight.uniform_(0.2, 1.5)
    return m


def plans(model, tiny_data, **options):
    out = {}
    for method in ("l1", "l2", "bn", "taylor", "lamp", "fpgm", "hessian", "random"):
        if method in GRADIENT_METHODS:
            accumulate_gradients(
                model, calibration_batches(tiny_data, 64, 4, 2, model), detection_loss(model), GRADIENT_METHODS[method]
            )
        out[method] = dict(ChannelPruner(model, prune_method=method, prune_round=8, **options).plan(ratio=0.5).groups)
        model.zero_grad(set_to_none=True)
    return out


def test_each_criterion_chooses_its_own_channels(model, tiny_data):
    uniform = plans(model, tiny_data)
    assert all(p.keys() == uniform["l2"].keys() for p in uniform.values())  # uniform: same groups, same counts
    for method in ("l1", "bn", "taylor", "fpgm", "hessian", "random"):
        assert uniform[method] != uniform["l2"], method
    assert uniform["taylor"] != uniform["hessian"]
    # LAMP is L2 renormalised per layer: the same order inside a layer, so it differs only when ranked globally
    assert uniform["lamp"] == uniform["l2"]
    ranked = plans(model, tiny_data, prune_global=True)
    assert ranked["lamp"] != ranked["l2"]


def test_gradient_criteria_need_real_batches(model, tmp_path):
    with pytest.raises(PruneError, match="gradients"):
        plan_for_target(model, prune=0.5, prune_method="taylor")
    r = run_cli("prune", "model=yolo11n.yaml", "prune=0.5", "prune_method=hessian", f"project={tmp_path}", cwd=tmp_path)
    assert r.returncode == 2 and "data=" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists()
    r = run_cli(
        "prune", "model=yolo11n.yaml", "prune=0.5", "prune_method=taylor", "data=shapes-8", "imgsz=64", "batch=4",
        f"project={tmp_path}", "name=t", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "t" / "prune_summary.json").read_text())
    assert s["method"] == "taylor" and 0.45 <= s["gflops_reduction"] <= 0.55


def test_global_ranking_is_uneven_and_capped(model):
    uniform = plan_for_target(model, prune=0.5, imgsz=64)
    ranked = plan_for_target(model, prune=0.5, imgsz=64, prune_global=True, prune_max_ratio=0.75, prune_round=8)
    assert abs(ranked.est_flops_fraction - 0.5) < 0.02
    pruner = ChannelPruner(model, prune_round=8)
    sizes = {name: len(order) for name, order, *_ in pruner.groups}
    ratios = [len(idx) / sizes[name] for name, idx in ranked.groups]
    assert max(ratios) <= 0.75 + 1e-9  # the cap holds
    assert max(ratios) - min(ratios) > 0.3  # layers are not cut alike
    assert dict(ranked.groups) != dict(uniform.groups)


def test_ignore_and_per_layer_ratios(model):
    before = layer_widths(model)
    ignored = plan_for_target(model, prune=0.5, imgsz=64, prune_ignore=[4, "model.6"])
    assert not [n for n, _ in ignored.groups if n.startswith(("model.4.", "model.6."))]
    fixed = plan_for_target(model, prune_layers={4: 0.5, "model.8.cv2": 0.25}, prune_round=8)
    names = {n for n, _ in fixed.groups}
    assert names and all(n.startswith(("model.4.", "model.8.cv2")) for n in names)
    for name, idxs in fixed.groups:
        want = 0.5 if name.startswith("model.4.") else 0.25
        assert len(idxs) == round(before[name] * want / 8) * 8 or before[name] <= 8
    with pytest.raises(PruneError, match="prune_ignore: 99"):
        plan_for_target(model, prune=0.5, prune_ignore=[99])


def test_prune_layers_yaml_through_the_cli(tmp_path):
    (tmp_path / "ratios.yaml").write_text("4: 0.5\nmodel.8.cv2: 0.25\n")
    r = run_cli(
        "prune", "model=yolo11n.yaml", f"prune_layers={tmp_path / 'ratios.yaml'}", "prune_round=8", "imgsz=64",
        f"project={tmp_path}", "name=l", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    layers = json.loads((tmp_path / "l" / "prune_summary.json").read_text())["layers"]
    changed = {k for k, (a, b) in layers.items() if a != b}
    assert "model.4.cv2.conv" in changed and "model.8.cv2.conv" in changed
    assert all(k.startswith(("model.4.", "model.5.", "model.6.", "model.8.", "model.9.")) for k in changed), changed
    (tmp_path / "bad.yaml").write_text("4: 1.5\n")
    r = run_cli("prune", "model=yolo11n.yaml", f"prune_layers={tmp_path / 'bad.yaml'}", f"project={tmp_path}", "name=b")
    assert r.returncode == 2 and "prune_layers[4]=1.5" in r.stderr and not (tmp_path / "b").exists()


def test_sparsity_proximal_step_shrinks_scales_exactly():
    m = DetectionModel("yolo11n.yaml", nc=6, verbose=False)
    norms = penalised_norms(m)
    assert norms and not any(n in norms for a in m.modules() if type(a).__name__ == "Attention" for n in a.modules())
    opt = torch.optim.SGD([p for n in norms for p in n.parameters()], lr=0.01)
    hook = BNSparsity(norms, lam=10.0)
    hook.attach(opt)
    before = [n.weight.detach().clone() for n in norms]
    for _ in range(4):  # zero gradients: only the proximal step moves the scales, by lr * lambda = 0.1 each time
        opt.zero_grad()
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.zeros_like(p)
        opt.step()
    for b, n in zip(before, norms):
        assert torch.allclose(n.weight, b.sign() * (b.abs() - 0.4).clamp(min=0), atol=1e-6)
    hook.detach()
    opt.step()
    assert torch.allclose(norms[0].weight, before[0].sign() * (before[0].abs() - 0.4).clamp(min=0), atol=1e-6)


def _bn_scale(trainer) -> float:
    return float(torch.cat([n.weight.detach().abs() for n in penalised_norms(trainer.model)]).mean())


def test_sparsity_training_shrinks_scales_until_the_last_step(tmp_path, tiny_data):
    from test_trainer import fit, make_trainer

    scales = {}
    for lam in (0.0, 30.0):
        torch.manual_seed(0)
        trainer, _ = make_trainer(tmp_path / str(lam), tiny_data)
        cb = PruneCallbacks(prune=0.5, prune_steps=1, prune_start=2, prune_sparsity=lam, prune_method="bn")
        cb.on_pretrain_routine_end(trainer)
        trainer.epoch = 0
        cb.on_train_epoch_start(trainer)  # no step yet: attaches the sparsity hook when lambda > 0
        assert (cb.hooks.sparsity is not None) == (lam > 0)
        batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
        fit(trainer, batch, 10)
        scales[lam] = _bn_scale(trainer)
        if lam:
            trainer.epoch = 2
            cb.on_train_epoch_start(trainer)  # the last step: sparsity training ends with it
            assert cb.state["done"] == 1 and cb.hooks.sparsity is None
    assert scales[30.0] < 0.9 * scales[0.0], scales


def test_sensitivity_writes_csv_and_chart(tmp_path, trained_pt):
    r = run_cli(
        "sensitivity", f"model={trained_pt}", "data=shapes-8", "imgsz=64", "batch=4", "ratios=0.25,0.5",
        "layers=2,4,8", f"project={tmp_path}", "name=s", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "yolo-prune sensitivity" in r.stderr + r.stdout  # the TQDM progress bar
    rows = list(csv.DictReader(open(tmp_path / "s" / "sensitivity.csv")))
    assert rows[0]["layer"] == "none" and len(rows) == 1 + 3 * 2
    for layer in ("2", "4", "8"):
        g = [float(x["gflops"]) for x in rows if x["layer"] == layer]
        assert g[0] > g[1] and g[0] < float(rows[0]["gflops"])  # more pruning, fewer GFLOPs
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 10_000
    r = run_cli("sensitivity", f"model={trained_pt}", "data=shapes-8", "layers=1,99", f"project={tmp_path}", "name=x")
    assert r.returncode == 2 and "layers=99" in r.stderr and not (tmp_path / "x").exists()


def test_sensitivity_method_spares_sensitive_layers(tmp_path, model):
    """A table where layer 6 is fragile and layer 8 is robust: the allocation cuts 8 and leaves 6."""
    rows = ["layer,ratio,channels_removed,params,gflops,map50,map50_95,drop", "none,0,0,0,0,0.5,0.3,0"]
    for layer in (2, 4, 6, 8):
        for ratio in (0.25, 0.5, 0.75):
            drop = 0.2 * ratio if layer == 6 else 0.001 * ratio if layer == 8 else 0.02 * ratio
            rows.append(f"{layer},{ratio},0,0,0,0,0,{drop}")
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    plan = plan_for_target(model, prune=0.1, imgsz=64, prune_method="sensitivity", prune_sensitivity=tmp_path / "s.csv")
    cut = {n.split(".")[1] for n, _ in plan.groups}
    assert "8" in cut and "6" not in cut
    assert 0.8 <= plan.est_flops_fraction <= 0.92


def test_unstructured_and_2_4_one_shot(tmp_path):
    r = run_cli("prune", "model=yolo11n.yaml", "prune=0.6", "prune_mode=unstructured", "imgsz=64",
                f"project={tmp_path}", "name=u", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "u" / "prune_summary.json").read_text())
    m = YOLO(str(tmp_path / "u" / "weights" / "pruned.pt")).model
    assert abs(sparsity(m, "unstructured") - 0.6) < 0.01 and abs(s["sparsity"] - 0.6) < 0.01
    assert s["params_after"] == s["params_before"]  # shapes stay: only zeros
    assert not any(n.endswith(("_orig", "_mask")) for n in m.state_dict())  # made permanent
    r = run_cli("prune", "model=yolo11n.yaml", "prune_mode=2:4", "imgsz=64", f"project={tmp_path}", "name=s24",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    m = YOLO(str(tmp_path / "s24" / "weights" / "pruned.pt")).model
    layers = eligible_layers(m, "2:4")
    assert len(layers) > 50
    for layer in layers.values():
        w = layer.weight.detach().movedim(1, -1).reshape(-1, 4)
        assert int(((w != 0).sum(-1) <= 2).all()), layer  # at most 2 of every 4 input weights are non-zero
    r = run_cli("prune", "model=yolo11n.yaml", "prune_mode=4:8", f"project={tmp_path}", "name=bad")
    assert r.returncode == 2 and "prune_mode='4:8'" in r.stderr and not (tmp_path / "bad").exists()


def test_unstructured_sparsity_survives_fine_tuning(tmp_path):
    r = run_cli("train", "model=yolo11n.yaml", *TRAIN, "epochs=3", "prune=0.5", "prune_steps=2", "prune_mode=unstructured",
                f"project={tmp_path}", "name=u", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("best.pt", "last.pt"):  # after epochs of updates, the zeros are still there, in the EMA too
        assert sparsity(YOLO(str(tmp_path / "u" / "weights" / f)).model, "unstructured") >= 0.499
    rows = list(csv.DictReader(open(tmp_path / "u" / "results.csv")))
    assert [round(float(r["model/sparsity"]), 2) for r in rows] == [0.0, 0.25, 0.5]


def test_trainer_ranks_taylor_by_training_batches(tmp_path):
    r = run_cli("train", "model=yolo11n.yaml", *TRAIN, "epochs=2", "prune=0.4", "prune_method=taylor",
                "prune_global=True", f"project={tmp_path}", "name=t", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    log = r.stdout + r.stderr
    assert "taylor importance from the gradients of 2 training batches" in log  # shapes-8 at batch 4: 2 batches
    state = YOLO(str(tmp_path / "t" / "weights" / "best.pt")).model.prune_state
    assert 0.36 <= 1 - state["history"][-1]["gflops"] / state["base"]["gflops"] <= 0.44


def test_prune_model_python_api_with_batches(tiny_data):
    m = DetectionModel("yolo11n.yaml", nc=6, verbose=False)
    plan = prune_model(m, prune=0.3, prune_method="hessian", batches=calibration_batches(tiny_data, 64, 4, 2, m), imgsz=64)
    assert plan.n_channels > 0 and all(p.grad is None for p in m.parameters())  # gradients are not left behind


def test_group_regularization_decays_each_channel_of_a_coupled_group_alike():
    from yolo_prune.engine.sparsity import ALPHA, GroupDecay, group_slices

    m = DetectionModel("yolo11n.yaml", nc=6, verbose=False)  # stock C3k2: cv1 holds both halves
    groups = group_slices(m)
    cv1 = m.model[2].cv1.conv.weight
    rows = [set(s.idx.tolist()) for _, _, sl in groups for s in sl if s.param is cv1 and s.dim == 0]
    assert len(rows) == 2 and not rows[0] & rows[1] and rows[0] | rows[1] == set(range(cv1.shape[0]))  # two halves
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)  # zero gradients: only the decay moves the weights
    for group in groups:  # one group at a time: a conv's rows and columns belong to different groups
        _, n, slices = group
        norms = [s.squares().sqrt() for s in slices]
        decay = GroupDecay([group], reg=1.0)
        decay.attach(opt)
        opt.step()
        decay.detach()
        total = torch.zeros(n)
        for s, b in zip(slices, norms):
            total.index_add_(0, s.root, b.pow(2))
        norm = total.sqrt()
        gamma = ALPHA ** ((norm.max() - norm) / (norm.max() - norm.min()))
        for s, b in zip(slices, norms):  # every tensor of channel c shrank by 1 - lr * reg * gamma_c
            assert torch.allclose(s.squares().sqrt(), b * (1 - 0.01 * gamma[s.root]), rtol=1e-4, atol=1e-7)
        assert float(gamma.min()) == pytest.approx(1.0) and float(gamma.max()) == pytest.approx(ALPHA)
    # C2PSA (model.10): its second half feeds attention, so the pruner keeps both halves whole: neither decays
    psa = m.model[10].cv1.conv.weight
    assert not any(s.param is psa and s.dim == 0 for _, _, sl in groups for s in sl)
    # prune_ignore names the fused block: both halves stay; a frozen layer stays
    kept = {id(s.param) for _, _, sl in group_slices(m, prune_ignore=[2]) for s in sl if s.dim == 0}
    assert id(cv1) not in kept and id(m.model[2].cv1.bn.weight) not in kept
    m.model[0].conv.weight.requires_grad_(False)
    assert id(m.model[0].conv.weight) not in {id(s.param) for _, _, sl in group_slices(m) for s in sl}


def test_group_regularization_runs_until_the_last_step_on_each_new_optimizer(tmp_path, tiny_data):
    from test_trainer import fit, make_trainer

    trainer, _ = make_trainer(tmp_path, tiny_data)
    cb = PruneCallbacks(prune=0.5, prune_steps=2, prune_start=1, prune_end=2, prune_reg=5.0)
    cb.on_pretrain_routine_end(trainer)
    norms = []
    batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
    for epoch in range(3):
        trainer.epoch = epoch
        cb.on_train_epoch_start(trainer)
        decay = cb.hooks.decay
        assert (decay is not None) == (epoch < 2) and (decay is None or decay.optimizer is trainer.optimizer)
        if decay:
            w = decay.groups[0][0]
            before = float(w.norm())
            fit(trainer, batch, 3)
            norms.append((before, float(w.norm())))
    assert cb.state["done"] == 2 and len(norms) == 2
    assert all(after < before for before, after in norms), norms  # the weights shrank under the decay
