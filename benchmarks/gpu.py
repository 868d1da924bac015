"""GPU check: what pruning buys on a GPU, for a lent device, in one command that fits in 8 minutes.

Usage:
  python benchmarks/gpu.py                       # on the lent GPU: yolo11n, yolo26n, yolo11s at 640, batch 1 and 32
  python benchmarks/gpu.py --device cpu --models yolo11n --imgsz 96 --batches 1,2 --runs 3 --latency 0.2 --out /tmp/g

For each model (built from its yaml; latency does not depend on the weights): the unpruned model, ``prune=0.5`` and
``prune_latency=0.5 prune_runtime=torch`` (the latency table and closed loop timed on this GPU), each timed as PyTorch
CUDA fp16 (fused, synchronized) at every batch size, the three interleaved so a clock or load change hits them alike;
then, where ``tensorrt`` imports, the same three as TensorRT fp16 engines exported by Ultralytics at batch 1 (engine
builds take minutes: rows that no longer fit ``--budget`` are listed as skipped, not left out silently). Writes
``<out>/gpu.{json,md}`` (default: benchmarks/results/) with the command.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

from results_io import RESULTS, header, save

def cpu_threads(device: str) -> int | None:
    """1 on the CPU (the suite's check of this script: timed on the thread's CPU time, so a loaded machine cannot
    make the whole model look slower than its convs), the runtime's own on a GPU."""
    return 1 if device == "cpu" else None


def variants(latency: float) -> tuple[str, ...]:
    return "base", "prune=0.5", f"prune_latency={latency:g}"


def build(model: str, imgsz: int, device: str, latency: float) -> dict:
    """The three variants of ``model`` and what pruning them reported."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    from yolo_prune import prune_model
    from yolo_prune.cfg import PruneError
    from yolo_prune.engine.runtime import Runtime

    torch.manual_seed(0)
    base = YOLO(f"{model}.yaml").model.float().eval()
    half = copy.deepcopy(base)
    prune_model(half, prune=0.5, imgsz=imgsz)
    lat, keys = copy.deepcopy(base), ("predicted_ms", "measured_ms", "measured_speedup", "measured_speedups",
                                      "table_shapes_timed")  # fmt: skip
    try:  # on a GPU at batch 1 the convs may explain too little of the time to reach the target: a row says so
        rt = Runtime("torch", device, cpu_threads(device), 1, imgsz)
        plan = prune_model(lat, prune_latency=latency, imgsz=imgsz, runtime=rt)
        info = {k: plan.latency.get(k) for k in keys}
    except PruneError as e:
        lat, info = None, {"refused": str(e)}
    nets = {k: v for k, v in zip(variants(latency), (base, half, lat)) if v is not None}
    return {"nets": nets, "gflops": {k: round(get_flops(v, imgsz), 3) for k, v in nets.items()}, "latency_plan": info}


def time_torch(nets: dict, imgsz: int, batch: int, device: str, runs: int) -> dict:
    """Median ms of each net as PyTorch fp16 on CUDA (fp32 on the CPU), interleaved."""
    from yolo_prune.engine.blocks import fold_model
    from yolo_prune.engine.runtime import Runtime, cpu_timed, time_interleaved, torch_runner

    rt = Runtime("torch", device, cpu_threads(device), batch, imgsz)
    fns = {}
    for k, net in nets.items():
        m = copy.deepcopy(net)
        fold_model(m)
        fns[k] = torch_runner(m.fuse(), (batch, 3, imgsz, imgsz), rt)
    ms = time_interleaved(fns, runs, cpu=cpu_timed(rt.device, rt.threads))
    return {k: round(v["median_ms"], 3) for k, v in ms.items()}


def time_tensorrt(nets: dict, imgsz: int, device: str, runs: int, work: Path) -> dict:
    """Median ms of each net as a TensorRT fp16 engine (Ultralytics' exporter, batch 1), interleaved."""
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.autobackend import AutoBackend

    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.engine.blocks import fold_model
    from yolo_prune.engine.runtime import time_interleaved

    dev = torch.device(f"cuda:{device}")  # device: a CUDA index (main checks it)
    x = torch.rand(1, 3, imgsz, imgsz, device=dev, dtype=torch.half)
    fns = {}
    for i, (k, net) in enumerate(nets.items()):
        m = copy.deepcopy(net)
        fold_model(m)
        pt = save_checkpoint(m, work / f"m{i}.pt", {"task": "detect", "imgsz": imgsz})
        engine = YOLO(str(pt)).export(format="engine", imgsz=imgsz, half=True, device=device, verbose=False)
        backend = AutoBackend(engine, device=dev, fp16=True)

        def run(b=backend):
            b(x)
            torch.cuda.synchronize(dev)

        fns[k] = run
    return {k: round(v["median_ms"], 3) for k, v in time_interleaved(fns, runs).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="yolo11n,yolo26n,yolo11s")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--device", default="0")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--latency", type=float, default=0.5, help="the prune_latency row's target")
    ap.add_argument("--budget", type=float, default=450, help="seconds; TensorRT rows that no longer fit are skipped")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    import torch

    args.device = args.device.removeprefix("cuda:")
    if args.device != "cpu" and not args.device.isdigit():
        sys.exit(f"gpu.py: --device {args.device} is invalid; accepted: a CUDA index (0, cuda:0) or cpu")
    if args.device != "cpu" and not torch.cuda.is_available():
        sys.exit("gpu.py: no CUDA device here; accepted: --device cpu (checks the plumbing at fp32)")
    t0 = time.perf_counter()
    try:
        import tensorrt  # noqa: F401

        trt = args.device != "cpu"
    except ImportError:
        trt = False
    rows, skipped, built = [], [], {}
    for model in args.models.split(","):
        built[model] = b = build(model, args.imgsz, args.device, args.latency)
        for batch in map(int, args.batches.split(",")):
            ms = time_torch(b["nets"], args.imgsz, batch, args.device, args.runs)
            rows.append({"model": model, "runtime": "torch-cuda-fp16" if args.device != "cpu" else "torch-cpu-fp32",
                         "batch": batch, "ms": ms, "speedup": {k: round(ms["base"] / v, 3) for k, v in ms.items()},
                         "gflops": b["gflops"], "latency_plan": b["latency_plan"]})  # fmt: skip
            write(rows, skipped, args, t0)  # after every row: a run stopped at its time limit keeps what it measured
    for model, b in built.items():
        if not trt:
            skipped.append(f"{model} TensorRT: tensorrt does not import here" if args.device != "cpu" else
                           f"{model} TensorRT: --device cpu")  # fmt: skip
            continue
        if time.perf_counter() - t0 > args.budget:
            skipped.append(f"{model} TensorRT: past the {args.budget:.0f} s budget")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            ms = time_tensorrt(b["nets"], args.imgsz, args.device, args.runs, Path(tmp))
        rows.append({"model": model, "runtime": "tensorrt-fp16", "batch": 1, "ms": ms,
                     "speedup": {k: round(ms["base"] / v, 3) for k, v in ms.items()}, "gflops": b["gflops"]})  # fmt: skip
        write(rows, skipped, args, t0)
    write(rows, skipped, args, t0)


def write(rows: list[dict], skipped: list[str], args, t0: float) -> None:
    """<out>/gpu.{json,md} with the rows so far."""
    import torch

    device = torch.cuda.get_device_name(int(args.device)) if args.device != "cpu" else "cpu"
    out = {**header(), "device": device, "imgsz": args.imgsz, "runs": args.runs, "rows": rows, "skipped": skipped,
           "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    names = variants(args.latency)
    body = [f"{device}, imgsz {args.imgsz}, median of {args.runs} interleaved runs per model; speed-up over the "
            f"unpruned model", "", "| model | runtime | batch | " + " | ".join(f"{v} ms (x)" for v in names) +
            " | GFLOPs " + " / ".join(names) + " |", "|---|---|---|" + "---|" * (len(names) + 1)]  # fmt: skip
    for r in rows:
        cells = [f"{r['ms'][v]:.2f} ({r['speedup'][v]:.2f}x)" if v in r["ms"] else "refused" for v in names]
        body.append(f"| {r['model']} | {r['runtime']} | {r['batch']} | " + " | ".join(cells) + " | "
                    + " / ".join(f"{r['gflops'][v]:.1f}" if v in r["gflops"] else "-" for v in names) + " |")  # fmt: skip
    refused = {r["model"]: r["latency_plan"]["refused"] for r in rows if "refused" in r.get("latency_plan", {})}
    body += ["", *(f"Refused: {m} {v}" for m, v in refused.items()), *(f"Skipped: {s}" for s in skipped),
             f"Took {out['seconds']} s."]  # fmt: skip
    save("gpu", out, body, Path(args.out))


if __name__ == "__main__":
    main()
