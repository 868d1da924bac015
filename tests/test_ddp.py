"""Same channels pruned on every DDP rank: a real 2-process gloo group on CPU."""

import json
import os
import socket

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

    from yolo_prune.engine import apply_plan, plan_for_target, prepare_model
    from yolo_prune.trainer import broadcast_plan, rewrap_ddp

    model = DetectionModel("yolo11n.yaml", nc=6, verbose=False)
    g = torch.Generator().manual_seed(rank)  # different weights per rank: only the broadcast can make choices agree
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand(p.shape, generator=g) + 0.5)
    prepare_model(model)
    local = plan_for_target(model, prune=0.5, imgsz=128)  # what this rank alone would choose
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # syncs rank 0's weights to every rank
    plan = broadcast_plan(local if rank == 0 else None)
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
