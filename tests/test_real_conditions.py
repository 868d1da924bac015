"""Off the built-in path: other optimizers, a checkpoint's own imgsz, early stops, checkpoints written by a step, sparse
fine-tuning, integrations, NaN recovery, Ultralytics internals, and the CLI's start-up cost."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ultralytics import YOLO
from ultralytics.utils.torch_utils import get_flops

from conftest import needs, run_cli, run_without_plugin
from yolo_prune import add_pruning
from yolo_prune.train.state import STATE_VERSION, read_state
from yolo_prune.cfg import PruneConfig, PruneError
from yolo_prune.engine.allocate import body_signature
from yolo_prune.engine.targets import prune_model
from yolo_prune.deploy.export import ParityError, export, input_hw, input_shape
from yolo_prune.engine.backends import precision_found
from yolo_prune.modes.oneshot import prune_file
from yolo_prune.engine.unstructured import sparsity

TRAIN = dict(data="shapes-8", imgsz=64, batch=4, workers=0, plots=False)


def hyper(optimizer) -> list[dict]:
    """Every group's hyperparameters (all but the parameters), rounded against float noise."""
    out = []
    for g in optimizer.param_groups:
        d = {k: v for k, v in g.items() if k != "params"}
        out.append({k: round(v, 12) if isinstance(v, float) else v for k, v in d.items()})
    return out


@pytest.mark.parametrize("optimizer", ["SGD", "MuSGD", "Adam", "AdamW", "auto"])
def test_optimizer_groups_match_an_unpruned_control_run(tmp_path, tiny_data, optimizer):
    """After each step every group's lr, initial_lr, momentum/betas and weight decay equal the control run's.

    MuSGD gives the head's cv3 groups 3x lr0: reading 'the' lr from the first 'bias' group multiplied the lr at each
    step. ``auto`` picks AdamW with its own lr and betas here (MuSGD beyond 10,000 iterations: the MuSGD case).
    """
    seen = {}
    for run in ("control", "pruned"):
        model = YOLO("yolo11n.yaml")
        if run == "pruned":
            add_pruning(model, prune=0.5, prune_steps=2, prune_start=1, prune_end=2)
        rows = seen[run] = []
        model.add_callback("on_train_epoch_end", lambda t, rows=rows: rows.append(hyper(t.optimizer)))
        args = {**TRAIN, "data": tiny_data}  # the control run is plain Ultralytics: the yaml path
        model.train(**args, epochs=3, val=False, optimizer=optimizer, project=str(tmp_path), name=run)
    assert len(seen["pruned"]) == 3
    groups = seen["control"][0]
    if optimizer == "MuSGD":  # the boosted head groups are really there
        assert len({g["initial_lr"] for g in groups}) == 2
    assert seen["pruned"] == seen["control"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real 5-epoch run with steps at epochs 2 and 4, save_period=1, and a NaN loss at the end of epoch 4, whose
    recovery reloads the last.pt that step 2 wrote.

    Records what integrations and checkpoint hooks see.
    """
    tmp = tmp_path_factory.mktemp("real")
    rec = {"lr_keys": set(), "metrics": [], "saves": [], "nan": False, "state_is_shared": []}
    model = add_pruning(YOLO("yolo11n.yaml"), prune=0.5, prune_steps=2, prune_start=1, prune_end=3)

    def on_train_epoch_end(t):
        if t.epoch == 3 and not rec["nan"]:  # right after step 2: recovery reloads the last.pt that step wrote
            rec["nan"] = True
            t.loss = torch.tensor(float("nan"))

    def on_fit_epoch_end(t):
        rec["lr_keys"] |= set(t.lr)
        rec["metrics"].append(dict(t.metrics))

    def on_model_save(t):
        ck = torch.load(t.last, map_location="cpu", weights_only=False)
        rec["saves"].append((t.epoch, ck["epoch"], get_flops(ck["ema"].float(), 640)))

    def on_train_end(t):
        rec["state_is_shared"] = [t.ema.ema.prune_state is model.prune_callbacks.state]
        rec["trainer_state"] = model.prune_callbacks.state

    for event, fn in [
        ("on_train_epoch_end", on_train_epoch_end),
        ("on_fit_epoch_end", on_fit_epoch_end),
        ("on_model_save", on_model_save),
        ("on_train_end", on_train_end),
    ]:
        model.add_callback(event, fn)
    model.train(**TRAIN, epochs=5, save_period=1, optimizer="SGD", project=str(tmp), name="r")
    return tmp / "r", rec


def test_integrations_get_metrics_not_learning_rates(real_run):
    run, rec = real_run
    assert rec["lr_keys"] and all(k.startswith("lr/pg") for k in rec["lr_keys"])  # TensorBoard/W&B log these as lr
    g = [m["model/GFLOPs"] for m in rec["metrics"][:5]]  # the 6th is final_eval's validation of best.pt
    assert g[0] > g[2] > g[-1]  # trainer.metrics: the route every integration logs metrics from
    rows = list(csv.DictReader(open(run / "results.csv")))
    assert [float(r["model/GFLOPs"]) for r in rows] == pytest.approx(g)


def test_step_checkpoints_are_real_saves(real_run):
    """Steps write last.pt (atomically) and fire on_model_save at the true epoch; epoch{N}.pt files stay what they were."""
    run, rec = real_run
    base = YOLO(str(run / "weights" / "last.pt")).model.prune_state["base"]["gflops"]
    step_saves = [s for s in rec["saves"] if s[1] == s[0] - 1]  # last.pt holds the previous epoch plus the prune
    assert [s[0] for s in step_saves] == [1, 3]
    assert all(s[2] < 0.8 * base for s in step_saves)  # and the pruned model
    w = run / "weights"
    epoch0 = torch.load(w / "epoch0.pt", map_location="cpu", weights_only=False)
    assert epoch0["epoch"] == 0 and get_flops(epoch0["ema"].float(), 640) == pytest.approx(base, rel=1e-3)
    assert not [p for p in w.iterdir() if p.name.startswith(".")]  # no temp files left


def test_nan_recovery_in_a_real_run_keeps_shapes_and_state(real_run):
    run, rec = real_run
    assert rec["nan"]
    state = YOLO(str(run / "weights" / "last.pt")).model.prune_state
    assert state["done"] == 2 and [h["step"] for h in state["history"]] == [1, 2]
    assert state["version"] == STATE_VERSION
    assert rec["state_is_shared"] == [True]  # the EMA (a NaN-recovery deepcopy) points at the callbacks' state again
    assert 0.47 <= 1 - get_flops(YOLO(str(run / "weights" / "best.pt")).model, 640) / state["base"]["gflops"] <= 0.53


def test_export_without_imgsz_uses_the_checkpoints_own(real_run, tmp_path):
    """The Quick start's best.pt was trained at 320 (here 64): export without imgsz, parity at the graph's size."""
    run, _ = real_run
    best = tmp_path / "best.pt"
    best.write_bytes((run / "weights" / "best.pt").read_bytes())
    r = run_cli("export", f"model={best}", "format=onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert input_hw(tmp_path / "best.onnx", "onnx") == (64, 64)
    line = next(x for x in (r.stdout + r.stderr).splitlines() if "parity vs PyTorch" in x)
    assert float(line.split("max abs diff ")[1].split(",")[0]) <= 1e-3 and line.endswith("ok")


@needs("quantize")
def test_quantize_spellings_and_real_precision(real_run, tmp_path, monkeypatch, log_lines):
    run, _ = real_run
    best = run / "weights" / "best.pt"
    res = export(best, format="onnx", quantize="fp16", imgsz=64)
    assert res["quantize"] == 16 and precision_found(res["file"], "onnx") == {16} and res["max_abs_diff"] <= 1e-2
    res = export(best, format="openvino", half=True, imgsz=64)  # the deprecated spelling
    assert res["quantize"] == 16 and 16 in precision_found(res["file"], "openvino")
    with pytest.raises(PruneError, match="quantize='fp8'"):
        export(best, format="onnx", quantize="fp8")
    monkeypatch.setattr("yolo_prune.deploy.export.precision_found", lambda *a: set())  # an exporter that fell back to fp32
    with pytest.raises(ParityError, match="quantize=16"):
        export(best, format="onnx", quantize=16, imgsz=64)
    monkeypatch.undo()
    res = export(best, format="onnx", imgsz=64, batch=2)  # a static batch: the parity image fills every slot
    assert res["max_abs_diff"] <= 1e-3 and input_shape(res["file"], "onnx")[0] == 2
    res = export(best, format="onnx", dynamic=True)  # dynamic graph, no imgsz: the checkpoint's own (64)
    assert res["max_abs_diff"] <= 1e-3 and input_hw(res["file"], "onnx") is None
    cp = tmp_path / "cli.pt"
    cp.write_bytes(best.read_bytes())
    r = run_cli("export", f"model={cp}", "format=onnx", "half=True", "imgsz=64", cwd=tmp_path)  # as 'yolo export'
    assert r.returncode == 0 and "quantize=16" in r.stdout + r.stderr, r.stderr[-2000:]
    res = export(best, format="torchscript", imgsz=64)
    assert "format=torchscript" in res["skipped"]
    assert any(x.startswith("WARNING") and "parity NOT checked" in x and "torchscript" in x for x in log_lines)


def test_patience_zero_and_no_validation_cannot_cut_the_schedule():
    from yolo_prune.train.schedule import check_patience

    check_patience(0, [10, 20, 30])  # patience=0 disables Ultralytics' early stopping
    check_patience(5, [10, 20, 30], val=False)  # no validation, no fitness, no early stop
    check_patience(10, [10, 20, 30])  # a gap of exactly patience epochs is safe
    with pytest.raises(PruneError, match="patience=9 .* accepted: patience >= 10, patience=0"):
        check_patience(9, [10, 20, 30])


def test_patience_that_can_cut_the_schedule_is_refused(tmp_path):
    r = run_cli(
        "train", "model=yolo11n.yaml", "data=shapes-8", "imgsz=64", "epochs=20", "prune=0.5", "patience=1",
        f"project={tmp_path}/o",
    )  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "patience=1" in r.stderr and "accepted: patience >=" in r.stderr
    assert not (tmp_path / "o").exists()


def test_unfinished_schedule_is_reported_with_what_was_reached(tmp_path, log_lines):
    model = add_pruning(YOLO("yolo11n.yaml"), prune=0.5, prune_steps=2, prune_start=1, prune_end=2)
    model.add_callback("on_fit_epoch_end", lambda t: setattr(t, "stop", t.epoch >= 1))  # e.g. a platform cancel
    model.train(**TRAIN, epochs=4, val=False, project=str(tmp_path), name="u")
    line = next(x for x in log_lines if "did not finish" in x)
    assert line.startswith("WARNING") and "1/2 steps" in line and "GFLOPs" in line and "of the 50% asked" in line


def test_missed_gflops_target_is_a_warning_then_a_refusal(tmp_path, log_lines):
    s = prune_file("yolo11n.yaml", prune=0.3, prune_round=32, project=str(tmp_path), name="m")
    assert 0.01 < abs(s["gflops_reduction"] - 0.3) <= 0.05  # 32-channel units land a point off on a nano model
    line = next(x for x in log_lines if "missed its GFLOPs target" in x)
    assert line.startswith("WARNING") and f"{s['gflops_reduction']:.1%} removed" in line
    with pytest.raises(PruneError, match=r"prune=0.5 cannot be reached on this model: the plan removes 29\.\d% .*"
                       r"\(prune_round=64 leave no more\); accepted: prune <= 0\.29"):  # 21 points off: refused
        prune_file("yolo11n.yaml", prune=0.5, prune_round=64, project=str(tmp_path), name="r")
    assert not (tmp_path / "r").exists()


def test_misspelled_engine_option_raises():
    with pytest.raises(PruneError, match="'ignor' is not a valid yolo-prune key; did you mean 'prune_ignore'"):
        prune_model(YOLO("yolo11n.yaml").model, prune=0.5, ignor=[2])


def test_prune_state_is_versioned():
    old = {"version": STATE_VERSION, "cfg": PruneConfig(prune=0.5).to_dict(), "schedule": [1], "done": 1,
           "history": [], "base": {"gflops": 6.5, "params": 1}}  # fmt: skip
    assert read_state(dict(old)) == old
    with pytest.raises(PruneError, match=rf"version {STATE_VERSION + 1} \(a later yolo-prune\), this yolo-prune .* reads"):
        read_state({**old, "version": STATE_VERSION + 1})
    with pytest.raises(PruneError, match="lacks 'schedule'"):
        read_state({k: v for k, v in old.items() if k != "schedule"})


def test_changed_ultralytics_internal_stops_before_training(tmp_path):
    model = YOLO("yolo11n.yaml")
    rename = lambda t: [g.__setitem__("param_group", "renamed") for g in t.optimizer.param_groups]  # noqa: E731
    model.add_callback("on_pretrain_routine_end", rename)  # runs before the plugin's own handler
    add_pruning(model, prune=0.5)
    with pytest.raises(PruneError, match=r"optimizer param_group tags .* supported: ultralytics>=8\.4\.8,<8\.5"):
        model.train(**TRAIN, epochs=3, project=str(tmp_path), name="i")
    assert not (tmp_path / "i" / "results.csv").exists()


def test_sparse_checkpoint_keeps_zeros_and_loads_without_plugin(tmp_path, trained_pt):
    s = prune_file(trained_pt, prune=0.5, prune_mode="unstructured", project=str(tmp_path), name="u")
    pt = Path(s["save_dir"]) / "weights" / "pruned.pt"
    r = run_without_plugin(
        "from ultralytics import YOLO; m = YOLO(sys.argv[1]); print(type(m.model).__name__, m.model.prune_state['cfg']['prune_mode'])",
        str(pt),
    )
    assert r.returncode == 0 and "DetectionModel unstructured" in r.stdout, r.stderr[-2000:]
    model = add_pruning(YOLO(str(pt)))  # fine-tune with no prune keys
    model.train(**TRAIN, epochs=2, val=False, project=str(tmp_path), name="ft")
    tuned = YOLO(str(tmp_path / "ft" / "weights" / "last.pt")).model
    assert sparsity(tuned, "unstructured") >= s["sparsity"] - 1e-6  # the zeros did not regrow


@pytest.mark.parametrize("mode", ["unstructured", "2:4"])
def test_sparse_masks_survive_resume(tmp_path, mode):
    keys = {"prune": 0.5, "prune_steps": 2, "prune_start": 1, "prune_end": 2} if mode == "unstructured" else {}
    model = add_pruning(YOLO("yolo11n.yaml"), prune_mode=mode, **({"prune_start": 1} if not keys else keys))
    saved = tmp_path / "epoch2.pt"

    def interrupt(t):  # keep last.pt as a kill after epoch 2 would leave it (a finished run strips it)
        if t.epoch == 1 and not saved.exists():  # once: the final validation fires this event again
            saved.write_bytes(t.last.read_bytes())
            t.stop = True

    model.add_callback("on_fit_epoch_end", interrupt)
    model.train(**TRAIN, epochs=4, val=False, project=str(tmp_path), name="s")
    last = tmp_path / "s" / "weights" / "last.pt"
    last.write_bytes(saved.read_bytes())
    before = sparsity(YOLO(str(last)).model, mode)
    assert before >= (0.24 if mode == "unstructured" else 0.49)
    add_pruning(YOLO(str(last))).train(resume=True)
    final = YOLO(str(last)).model
    state = final.prune_state
    assert state["done"] == len(state["schedule"])
    assert sparsity(final, mode) >= (0.49 if mode == "unstructured" else before - 1e-6)
    if mode == "2:4":  # every group of 4 still has at least 2 zeros after the resumed epochs
        from yolo_prune.engine.unstructured import eligible_layers

        w = next(iter(eligible_layers(final, mode).values())).weight.detach()
        groups = w.movedim(1, -1).reshape(-1, 4)
        assert int((groups == 0).sum(1).min()) >= 2


def test_ignore_layers_and_hessian_inside_training(tmp_path, log_lines):
    model = add_pruning(
        YOLO("yolo11n.yaml"),
        prune=0.5,
        prune_steps=2,
        prune_start=1,
        prune_end=2,
        prune_method="hessian",
        prune_ignore=[2],
        prune_layers={4: 0.5},
    )
    model.train(**TRAIN, epochs=3, val=False, project=str(tmp_path), name="h")
    base, pruned = YOLO("yolo11n.yaml").model, YOLO(str(tmp_path / "h" / "weights" / "last.pt")).model

    def width(m, layer):
        prefix = f"model.{layer}."
        return sum(
            c.out_channels for n, c in m.named_modules() if n.startswith(prefix) and isinstance(c, torch.nn.Conv2d)
        )

    assert width(pruned, 2) == width(base, 2)  # ignored layer intact
    assert 0.4 <= width(pruned, 4) / width(base, 4) <= 0.6  # its fixed ratio, reached over the two steps
    assert 0.45 <= 1 - get_flops(pruned, 640) / get_flops(base, 640) <= 0.55
    assert sum("hessian importance from the gradients of" in x for x in log_lines) == 2


def test_sensitivity_allocation_inside_training(tmp_path):
    table = tmp_path / "sensitivity.csv"
    body = body_signature(YOLO("yolo11n.yaml").model)  # the baseline row names the model (any class count)
    rows = ["layer,ratio,channels_removed,params,gflops,map50,map50_95,drop,body", f"none,0,0,0,0,0,0,0,{body}"]
    for layer in (2, 4, 6, 8, 13, 16, 19, 22):
        for ratio in (0.25, 0.5, 0.75):
            drop = 0.5 * ratio if layer == 2 else 0.01 * ratio  # layer 2 is fragile: it should be pruned last
            rows.append(f"{layer},{ratio},0,0,0,0,0,{drop},")
    table.write_text("\n".join(rows) + "\n")
    model = add_pruning(
        YOLO("yolo11n.yaml"), prune=0.4, prune_steps=2, prune_start=1, prune_end=2, prune_method="sensitivity",
        prune_sensitivity=str(table),
    )  # fmt: skip
    model.train(**TRAIN, epochs=3, val=False, project=str(tmp_path), name="s")
    base, pruned = YOLO("yolo11n.yaml").model, YOLO(str(tmp_path / "s" / "weights" / "last.pt")).model
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))  # val=False: the kept metrics dict, refreshed
    g = [float(r["model/GFLOPs"]) for r in rows]
    assert len(g) == 3 and g[0] > g[1] > g[2] and all(None not in r.values() for r in rows)
    assert pruned.model[2].cv2.conv.out_channels == base.model[2].cv2.conv.out_channels
    assert 0.35 <= 1 - get_flops(pruned, 640) / get_flops(base, 640) <= 0.45


def test_help_and_version_do_not_import_torch():
    for args in (["help"], ["--help"], ["-h"], ["version"]):
        r = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "yolo_prune", *args], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr[-1000:]
        assert ("Usage: yolo-prune MODE" in r.stdout) == (args != ["version"])
        imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
        assert not imported & {"torch", "ultralytics", "torch_pruning", "cv2"}, args


def test_prune_summary_records_state(tmp_path):
    s = prune_file("yolo11n.yaml", prune=0.3, project=str(tmp_path), name="p")
    state = YOLO(str(Path(s["save_dir"]) / "weights" / "pruned.pt")).model.prune_state
    assert state["version"] == STATE_VERSION and state["cfg"]["prune"] == 0.3 and state["schedule"] == []
    summary = json.loads((Path(s["save_dir"]) / "prune_summary.json").read_text())
    assert state["base"]["gflops"] == pytest.approx(summary["gflops_before"], abs=1e-3)
