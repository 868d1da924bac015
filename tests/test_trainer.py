"""Pruning inside the Ultralytics trainer: state rebuilt after a step, checkpoints, resume, NaN recovery, CLI."""

import csv
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ultralytics import YOLO
from ultralytics.utils.torch_utils import get_flops

from conftest import run_cli
from yolo_prune import add_pruning
from yolo_prune.train.callbacks import PruneCallbacks
from yolo_prune.train.trainers import PruneDetectionTrainer

TRAIN = ["data=shapes-8", "imgsz=64", "batch=4", "workers=0", "plots=False"]


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def gflops(pt) -> float:
    return get_flops(YOLO(str(pt)).model, 640)


def make_trainer(tmp_path, data):
    """A real trainer set up on the tiny dataset (model, optimizer, scheduler, EMA), with the callbacks added."""
    trainer = PruneDetectionTrainer(
        overrides=dict(
            model="yolo11n.yaml",
            data=data,
            epochs=3,
            imgsz=64,
            batch=4,
            workers=0,
            amp=False,
            project=str(tmp_path),
            name="s",
            plots=False,
            val=False,
        )
    )
    cb = PruneCallbacks(prune=0.5, prune_steps=1, prune_start=1)
    for event, fn in cb.callbacks.items():
        trainer.add_callback(event, fn)
    trainer._setup_train()  # runs on_pretrain_routine_end
    trainer.epoch = 1
    return trainer, cb


def fit(trainer, batch, n: int) -> list[float]:
    """``n`` optimizer steps on one batch through the trainer's real path (scaler, clipping, EMA update)."""
    trainer.model.train()
    losses = []
    for _ in range(n):
        loss, _ = trainer.model.loss(batch)
        loss.sum().backward()
        trainer.optimizer_step()
        losses.append(float(loss.sum()))
    return losses


@pytest.fixture()
def stepped(tmp_path, tiny_data):
    """The trainer right after one prune step at the start of epoch 1."""
    trainer, cb = make_trainer(tmp_path, tiny_data)
    old_params = list(trainer.model.parameters())  # kept alive, so their ids cannot be reused
    old_opt = trainer.optimizer
    cb.on_train_epoch_start(trainer)
    return trainer, cb, (old_params, old_opt)


def test_step_rebuilds_optimizer_scheduler_ema_freeze(stepped):
    trainer, cb, (old_params, old_opt) = stepped
    model = trainer.model
    old_params = {id(p) for p in old_params}
    assert cb.state["done"] == 1 and 0.47 <= 1 - cb.state["history"][0]["gflops"] / cb.state["base"]["gflops"] <= 0.53
    live = {id(p) for p in model.parameters()}
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_opt <= live  # no stale parameter in the optimizer
    assert len(old_params - live) > 100  # and most old tensors were indeed replaced by the prune
    assert {id(p) for p in model.parameters() if p.requires_grad} <= in_opt
    assert trainer.scheduler.optimizer is trainer.optimizer and trainer.scheduler.last_epoch == 0  # epoch 1 - 1
    assert type(trainer.optimizer) is type(old_opt)
    for new, old in zip(trainer.optimizer.param_groups, old_opt.param_groups):  # same hyper-parameters as chosen
        assert {k: v for k, v in new.items() if k != "params"} == {k: v for k, v in old.items() if k != "params"}
    assert shapes(trainer.ema.ema) == shapes(model)  # EMA pruned with the same plan
    assert trainer.ema.ema.prune_state is model.prune_state
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".dfl" in n for n in frozen)
    assert trainer.best_fitness is None and trainer.stopper.best_fitness == 0.0


def test_training_still_learns_after_a_step(tmp_path, tiny_data):
    """Fit a fixed batch (a random-init YOLO's loss first rises while the assigner warms up), prune, keep fitting."""
    trainer, cb = make_trainer(tmp_path, tiny_data)
    batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
    before = fit(trainer, batch, 80)[-5:]
    cb.on_train_epoch_start(trainer)
    after = fit(trainer, batch, 12)
    assert after[0] > max(before)  # the prune costs accuracy...
    assert sum(after[-3:]) / 3 < after[0] * 0.8, after  # ...and the rebuilt optimizer wins it back


def test_ema_keeps_following_the_model_after_a_step(tmp_path, tiny_data):
    """Ultralytics' ModelEMA caches its tensor pairs on the first update: a stale cache would freeze the EMA (which is
    what validation and checkpoints use) at the prune, while the live model trains on."""
    trainer, cb = make_trainer(tmp_path, tiny_data)
    batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
    fit(trainer, batch, 3)  # EMA updates before the step
    cb.on_train_epoch_start(trainer)
    snap = {k: v.clone() for k, v in trainer.ema.ema.state_dict().items() if v.is_floating_point()}
    fit(trainer, batch, 3)
    ema, live = trainer.ema.ema.state_dict(), trainer.model.state_dict()
    moved = [k for k in snap if not torch.equal(ema[k], snap[k])]
    assert len(moved) > 0.9 * len(snap), f"{len(moved)}/{len(snap)} EMA tensors moved"
    w = "model.2.cv2.conv.weight"  # a pruned layer: the EMA lerps towards the live weights
    assert (ema[w] - live[w]).abs().sum() < (snap[w] - live[w]).abs().sum()


@pytest.mark.parametrize("cfg, amp", [("yolo11n.yaml", "True"), ("yolo26n.yaml", "False"), ("yolov8n.yaml", "True")])
def test_cli_train_prunes_in_steps_to_target(tmp_path, cfg, amp):
    r = run_cli(
        "train",
        f"model={cfg}",
        *TRAIN,
        "epochs=6",
        "prune=0.5",
        "prune_steps=3",
        f"amp={amp}",
        f"project={tmp_path}",
        "name=t",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert all(f"step {k}/3 at epoch" in log for k in (1, 2, 3)) and "yolo-prune summary" in log
    w = tmp_path / "t" / "weights"
    state = YOLO(str(w / "best.pt")).model.prune_state
    base = state["base"]["gflops"]
    assert 0.47 <= 1 - gflops(w / "best.pt") / base <= 0.53  # best.pt is the final, pruned model
    assert gflops(w / "last.pt") == gflops(w / "best.pt")
    assert [h["step"] for h in state["history"]] == [1, 2, 3]
    rows = list(csv.DictReader(open(tmp_path / "t" / "results.csv")))
    g = [float(r["model/GFLOPs"]) for r in rows]
    assert len(rows) == 6 and g[0] > g[-1] and g == sorted(g, reverse=True)
    assert len(set(g)) == 4  # the start plus one value per step
    params = [float(r["model/params_M"]) for r in rows]
    assert params == sorted(params, reverse=True) and len(set(params)) == 4  # params fall with each step, as GFLOPs
    assert not any(k.startswith("lr/") and "model" in k for k in rows[0])


def test_pruned_checkpoint_trains_as_it_is(tmp_path, trained_pt):
    """YOLO('pruned.pt').train() must not rebuild from model.yaml (stock Ultralytics silently does)."""
    r = run_cli("prune", f"model={trained_pt}", "prune=0.5", f"project={tmp_path}", "name=p")
    assert r.returncode == 0, r.stderr[-2000:]
    pt = tmp_path / "p" / "weights" / "pruned.pt"
    model = add_pruning(YOLO(str(pt)))
    model.train(data="shapes-8", epochs=1, imgsz=64, batch=4, workers=0, plots=False, project=str(tmp_path), name="py")
    assert shapes(YOLO(str(tmp_path / "py" / "weights" / "last.pt")).model) == shapes(YOLO(str(pt)).model)
    r = run_cli("train", f"model={pt}", *TRAIN, "epochs=1", f"project={tmp_path}", "name=cli", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert shapes(YOLO(str(tmp_path / "cli" / "weights" / "last.pt")).model) == shapes(YOLO(str(pt)).model)


def test_pruned_checkpoint_with_other_classes_trains_through_the_cli(tmp_path):
    assert run_cli("prune", "model=yolo11n.yaml", "prune=0.3", f"project={tmp_path}", "name=p").returncode == 0
    r = run_cli("train", f"model={tmp_path}/p/weights/pruned.pt", *TRAIN, "epochs=1", f"project={tmp_path}", "name=t")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "the data has nc=6 and the model nc=80: rebuilt 3 class-output layers" in r.stdout + r.stderr
    assert YOLO(str(tmp_path / "t" / "weights" / "last.pt")).model.nc == 6


@pytest.fixture(scope="session")
def killed_run(tmp_path_factory) -> Path:
    """One real training run SIGKILLed after step 1, before its schedule ends (shared: tests resume copies of it)."""
    tmp_path = tmp_path_factory.mktemp("killed")
    cmd = [
        sys.executable,
        "-m",
        "yolo_prune",
        "train",
        "model=yolo11n.yaml",
        *TRAIN,
        "epochs=8",
        "prune=0.5",
        "prune_steps=3",
        "prune_start=1",
        "prune_end=5",
        f"project={tmp_path}",
        "name=r",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "r" / "results.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 3:  # header + 2 epochs: step 1 ran at epoch 2
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be interrupted"
    last = tmp_path / "r" / "weights" / "last.pt"
    done = torch.load(last, weights_only=False)["ema"].prune_state["done"]
    assert 1 <= done < 3, done
    return tmp_path / "r"


def copy_run(run: Path, dst: Path) -> Path:
    """A copy of a run folder whose last.pt resumes into the copy (Ultralytics resumes into train_args' save_dir)."""
    shutil.copytree(run, dst)
    last = dst / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    for args in (ckpt["train_args"], getattr(ckpt["ema"], "args", None)):
        if isinstance(args, dict):
            args.update(save_dir=str(dst), project=str(dst.parent), name=dst.name)
    torch.save(ckpt, last)
    return last


@pytest.mark.parametrize("how", ["cli", "python"])
def test_resume_after_kill_continues_schedule(tmp_path, killed_run, how):
    last = copy_run(killed_run, tmp_path / "r")
    if how == "cli":
        r = run_cli("train", "resume=True", f"model={last}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    else:
        add_pruning(YOLO(str(last))).train(resume=True)
    best = tmp_path / "r" / "weights" / "best.pt"
    state = YOLO(str(best)).model.prune_state
    assert [h["step"] for h in state["history"]] == [1, 2, 3]  # each step once, none repeated or skipped
    assert 0.47 <= 1 - gflops(best) / state["base"]["gflops"] <= 0.53
    rows = list(csv.DictReader(open(tmp_path / "r" / "results.csv")))
    assert [int(r["epoch"]) for r in rows][-1] == 8


def test_train_bad_schedule_writes_nothing(tmp_path):
    r = run_cli(
        "train", "model=yolo11n.yaml", *TRAIN, "epochs=3", "prune=0.5", "prune_steps=5", f"project={tmp_path}/o"
    )
    assert r.returncode == 2 and "prune_steps=5" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    r = run_cli("train", "model=yolo11n.yaml", *TRAIN, "prune_ratio=0.5", f"project={tmp_path}/o")
    assert r.returncode == 2 and "prune_ratio" in r.stderr
