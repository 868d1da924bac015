"""DDP with pruning (and prune_distill): a real 2-process gloo group on CPU."""

import json
import os
import socket

import pytest

from conftest import needs
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), YOLO_OFFLINE="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from ultralytics.nn.tasks import DetectionModel

    from yolo_prune.engine.plan import apply_plan
    from yolo_prune.engine.targets import plan_for_target
    from yolo_prune.engine.graph import prepare_model
    from yolo_prune.train.ddp import broadcast_from_rank0, rewrap_ddp

    model = DetectionModel("yolo11n.yaml", nc=6, verbose=False)
    g = torch.Generator().manual_seed(rank)  # different weights per rank: only the broadcast can make choices agree
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand(p.shape, generator=g) + 0.5)
    prepare_model(model)
    local = plan_for_target(model, prune=0.5, imgsz=128)  # what this rank alone would choose
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # syncs rank 0's weights to every rank
    plan = broadcast_from_rank0(local if rank == 0 else None)
    apply_plan(model, plan)
    ddp = rewrap_ddp(ddp)  # the old wrapper's buckets reference the unpruned tensors
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(rank))  # each rank its own batch
    out = model(x)  # without DDP: this rank's gradient alone
    (out["boxes"].float().mean() + out["scores"].float().mean()).backward()
    local_grad = float(model.model[0].conv.weight.grad.abs().sum())
    model.zero_grad()
    out = ddp(x)
    loss = out["boxes"].float().mean() + out["scores"].float().mean()
    loss.backward()  # gradient all-reduce across ranks: needs identical shapes on both
    grad = float(model.model[0].conv.weight.grad.abs().sum())
    res = {
        "plan": plan.groups,
        "local": local.groups,
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "grad": grad,
        "local_grad": local_grad,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


def test_plan_is_decided_on_rank0_and_applied_everywhere(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r1["local"] != r0["local"]  # the ranks would have pruned different channels on their own
    assert r0["plan"] == r1["plan"] == r0["local"]  # rank 0's choice everywhere
    assert r0["shapes"] == r1["shapes"]
    assert abs(r0["local_grad"] - r1["local_grad"]) > 1e-3 * r0["local_grad"]  # the batches differ per rank...
    assert abs(r0["grad"] - r1["grad"]) < 1e-6 * max(1.0, r0["grad"])  # ...and the rewrapped DDP all-reduces them


def _distill_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    # RANK before Ultralytics is imported: its RANK decides who writes weights/teacher.pt, as in a real DDP run
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), YOLO_OFFLINE="1", RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from pathlib import Path
    from types import SimpleNamespace

    from ultralytics.cfg import get_cfg
    from ultralytics.nn.distill_model import DistillationModel
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import ModelEMA

    import yolo_prune.train.surgery as tr
    from yolo_prune.train.ddp import broadcast_from_rank0
    from yolo_prune.train.distill import check_projectors, hooks_off, refresh_teacher, start_self_distillation
    from yolo_prune.engine.targets import plan_for_target
    from yolo_prune.engine.graph import prepare_model

    # the optimizer rebuild needs a full trainer and is covered by test_trainer; here: wrapper, projectors, EMA, DDP
    tr.rebuild_optimizer = lambda trainer, epoch=None: None
    torch.manual_seed(rank)  # different projector initialisations per rank: only DDP's broadcast can align them
    model = DetectionModel("yolo11n.yaml", nc=6, verbose=False)
    model.args = get_cfg(overrides={"imgsz": 64, "dis": 1.0})
    prepare_model(model)
    trainer = SimpleNamespace(
        model=torch.nn.parallel.DistributedDataParallel(model), ema=ModelEMA(model), args=model.args,
        wdir=Path(out_dir), freeze_layer_names=[".dfl"],
    )  # fmt: skip
    start_self_distillation(trainer)  # prune_distill at setup: DDP(student) -> DDP(wrapper)
    refresh_teacher(trainer)  # the first step: teacher = EMA weights, dis on
    wrapper = trainer.model.module
    plan = broadcast_from_rank0(plan_for_target(model, prune=0.5, imgsz=64) if rank == 0 else None)
    with hooks_off(trainer):
        tr.apply_step(trainer, plan)
    check_projectors(trainer.model.module)
    g = torch.Generator().manual_seed(rank)  # each rank its own batch
    batch = {
        "img": torch.rand(2, 3, 64, 64, generator=g),
        "cls": torch.tensor([[0.0], [3.0], [1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2], [0.5, 0.4, 0.5, 0.5]]),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
    }
    loss, items = trainer.model(batch)
    loss.sum().backward()  # gradient all-reduce over student and projectors: identical shapes needed on both ranks
    head = model.model[-1]
    res = {
        "ddp_of_wrapper": isinstance(trainer.model.module, DistillationModel) and trainer.model.module is wrapper,
        "projector_in": [p[0].in_channels for p in wrapper.projector],
        "head_in": [head.cv2[i][0].conv.in_channels for i in range(len(wrapper.projector))],
        "ema_projector_in": [p[0].in_channels for p in trainer.ema.ema.projector],
        "teacher_head_in": [wrapper.teacher_model.model[-1].cv2[i][0].conv.in_channels for i in range(3)],
        "teacher_grads": sum(p.grad is not None for p in wrapper.teacher_model.parameters()),
        "dis_loss": float(items["dis_loss"]),
        "projector_sum": float(sum(p.abs().sum() for p in wrapper.projector.parameters())),
        "projector_grad": float(wrapper.projector[0][0].weight.grad.abs().sum()),
        "student_grad": float(model.model[0].conv.weight.grad.abs().sum()),
        "shapes": {k: list(v.shape) for k, v in wrapper.state_dict().items() if not k.startswith("teacher_model.")},
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


@needs("distillation")
def test_prune_distill_under_ddp(tmp_path):
    """prune_distill in a 2-rank group: the wrapper replaces the student inside DDP, a broadcast plan narrows student,
    projectors and EMA alike on both ranks, and one DDP backward all-reduces student and projector gradients."""
    mp.spawn(_distill_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["ddp_of_wrapper"]
        assert r["projector_in"] == r["head_in"] == r["ema_projector_in"]
        assert all(p < t for p, t in zip(r["projector_in"], r["teacher_head_in"]))  # narrowed; teacher is not
        assert r["teacher_grads"] == 0 and r["dis_loss"] > 0
    assert r0["shapes"] == r1["shapes"]
    assert r0["projector_sum"] == r1["projector_sum"]  # rank 0's projector weights everywhere, despite other seeds
    assert r0["projector_grad"] == pytest.approx(r1["projector_grad"], rel=1e-5)
    assert r0["student_grad"] == pytest.approx(r1["student_grad"], rel=1e-5)
    from ultralytics.nn.tasks import load_checkpoint

    teacher, _ = load_checkpoint(str(tmp_path / "teacher.pt"))  # written once (rank 0), at the unpruned widths
    assert [teacher.model[-1].cv2[i][0].conv.in_channels for i in range(3)] == r0["teacher_head_in"]
