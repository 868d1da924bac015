"""Edge runtimes: what prune=0.5 and prune_latency=0.5 give on each runtime, timed independently of the pruner.

Usage:
  python benchmarks/edge.py                      # yolo11n, yolo26n at 640 and 320 on every runtime, both targets
  python benchmarks/edge.py --models yolo11n --imgsz 640 --runtimes ncnn,litert --targets latency --repeat 3 \\
      --name edge_latency_runs                   # prune_latency=0.5 three times in a row, each from scratch

For each model (built from its yaml, seed 0; latency does not depend on the weights), image size and runtime:
``prune=0.5`` (one plan per model and size: a GFLOPs target does not depend on the runtime) and
``prune_latency=0.5 prune_runtime=<runtime>`` (its latency table and closed loop on that runtime, 1 thread). Then the
independent check: both models exported by Ultralytics' exporter to the runtime's format, loaded fresh, and timed at
batch 1, 1 thread, base and pruned interleaved, in 3 repeats of ``--runs`` each; the speed-up is the median of the
repeats' ratios (their range is reported), and realization = speed-up / GFLOPs ratio. ``--repeat N`` runs the
latency prune N times from scratch (a second run reuses the table cached by the first, as a user's would).
Results: ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
from results_io import header, save

from yolo_prune.cfg import RUNTIME_FORMATS

REPEATS = 3  # independent timings per pair, the ratio reported is their median


def exported(net, imgsz: int, fmt: str, work: Path, name: str) -> str:
    """``net`` (folded) exported by Ultralytics to ``fmt`` at batch 1."""
    from ultralytics import YOLO

    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.engine.backends import no_runtime_installs
    from yolo_prune.engine.blocks import fold_model

    m = copy.deepcopy(net).float().eval()
    fold_model(m)
    (work / name).mkdir(parents=True, exist_ok=True)
    pt = save_checkpoint(m, work / name / "m.pt", {"task": "detect", "imgsz": imgsz})
    with no_runtime_installs():
        return str(YOLO(str(pt)).export(format=fmt, imgsz=imgsz, batch=1, verbose=False))


def independent(base_file: str, pruned_file: str, fmt: str, imgsz: int, runs: int) -> dict:
    """Both exports loaded fresh and timed interleaved at 1 thread, :data:`REPEATS` times: ms and speed-ups."""
    from yolo_prune.engine.runtime import exported_runner, time_interleaved

    fns = {"base": exported_runner(base_file, fmt, 1, imgsz), "pruned": exported_runner(pruned_file, fmt, 1, imgsz)}
    reps = [time_interleaved(fns, runs, cpu=True) for _ in range(REPEATS)]  # 1 thread: thread CPU time
    speedups = [r["base"]["median_ms"] / r["pruned"]["median_ms"] for r in reps]
    mid = reps[int(np.argsort(speedups)[len(speedups) // 2])]
    return {"base_ms": round(mid["base"]["median_ms"], 2), "pruned_ms": round(mid["pruned"]["median_ms"], 2),
            "speedup": round(float(np.median(speedups)), 3), "speedups": [round(s, 3) for s in speedups]}  # fmt: skip


def write(rows: list[dict], args, t0: float) -> None:
    """results/<name>.{json,md} with the rows so far (rewritten after every row: a stopped run keeps what it measured)."""
    out = {**header(), "threads": 1, "batch": 1, "repeats": REPEATS, "runs": args.runs, "rows": rows,
           "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    body = [f"Batch 1, 1 thread, models from the yamls (seed 0). Independent timing: both exports loaded fresh, "
            f"interleaved, {REPEATS} repeats of {args.runs} runs; speed-up = median of the repeats (range in "
            f"brackets); realization = speed-up / GFLOPs ratio; loop = the speed-up prune_latency's own closed loop "
            f"reported.", "",
            "| model | imgsz | runtime | target | GFLOPs kept | ms before -> after | speed-up [range] | realization "
            "| loop |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "refused" in r:
            body.append(f"| {r['model']} | {r['imgsz']} | {r['runtime']} | {r['target']} | refused: {r['refused']} "
                        "| | | | |")  # fmt: skip
            continue
        loop = f"{r['loop_speedup']:.2f}x" if r.get("loop_speedup") else ""
        body.append(f"| {r['model']} | {r['imgsz']} | {r['runtime']} | {r['target']} | {r['gflops_kept']:.2f} | "
                    f"{r['base_ms']:.1f} -> {r['pruned_ms']:.1f} | **{r['speedup']:.2f}x** "
                    f"[{min(r['speedups']):.2f}-{max(r['speedups']):.2f}] | {r['realization']:.2f} | {loop} |")  # fmt: skip
    body.append(f"\nTook {out['seconds']:.0f} s.")
    save(args.name, out, body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="yolo11n,yolo26n")
    ap.add_argument("--imgsz", default="640,320")
    ap.add_argument("--runtimes", default=",".join(RUNTIME_FORMATS))
    ap.add_argument("--targets", default="prune,latency", help="prune (prune=0.5), latency (prune_latency=0.5)")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=1, help="latency prunes from scratch per runtime")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per model in each independent repeat")
    ap.add_argument("--name", default="edge")
    args = ap.parse_args()
    import torch
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    from yolo_prune import prune_model
    from yolo_prune.cfg import PruneError
    from yolo_prune.engine.runtime import Runtime

    torch.set_num_threads(1)
    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        for model in args.models.split(","):
            for imgsz in map(int, args.imgsz.split(",")):
                torch.manual_seed(0)
                base = YOLO(f"{model}.yaml").model.float().eval()
                g0 = get_flops(base, imgsz)
                half = None
                for rt_name in args.runtimes.split(","):
                    fmt = RUNTIME_FORMATS[rt_name]
                    base_file = exported(base, imgsz, fmt, work, f"{model}-{imgsz}-{rt_name}-base")
                    jobs = []
                    if "prune" in args.targets.split(","):
                        if half is None:
                            half = copy.deepcopy(base)
                            prune_model(half, prune=args.fraction, imgsz=imgsz)
                        jobs.append((f"prune={args.fraction:g}", half, None, 0.0))
                    for i in range(args.repeat if "latency" in args.targets.split(",") else 0):
                        net, t = copy.deepcopy(base), time.perf_counter()
                        try:
                            plan = prune_model(net, prune_latency=args.fraction, imgsz=imgsz,
                                               runtime=Runtime(rt_name, "cpu", 1, 1, imgsz))  # fmt: skip
                        except PruneError as e:  # out of reach on this runtime: a row that says so, then go on
                            rows.append({"model": model, "imgsz": imgsz, "runtime": rt_name,
                                         "target": f"prune_latency={args.fraction:g}", "refused": str(e)})  # fmt: skip
                            write(rows, args, t0)
                            break
                        jobs.append((f"prune_latency={args.fraction:g}", net, plan.latency, time.perf_counter() - t))
                    for i, (target, net, loop, seconds) in enumerate(jobs):
                        pruned_file = exported(net, imgsz, fmt, work, f"{model}-{imgsz}-{rt_name}-{i}")
                        ind = independent(base_file, pruned_file, fmt, imgsz, args.runs)
                        ratio = g0 / get_flops(net, imgsz)
                        row = {"model": model, "imgsz": imgsz, "runtime": rt_name, "target": target,
                               "gflops_kept": round(1 / ratio, 3), **ind,
                               "realization": round(ind["speedup"] / ratio, 3), "prune_seconds": round(seconds, 1)}  # fmt: skip
                        if loop:
                            row.update(loop_speedup=loop.get("measured_speedup"),
                                       loop_speedups=loop.get("measured_speedups"),
                                       table_shapes_timed=loop.get("table_shapes_timed"))  # fmt: skip
                        rows.append(row)
                        print(row, flush=True)
                        write(rows, args, t0)


if __name__ == "__main__":
    main()
