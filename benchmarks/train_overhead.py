"""Per-step overhead of pruning inside training, as a share of an epoch's time.

Usage: python benchmarks/train_overhead.py [--model yolo11n.yaml] [--data shapes-500] [--imgsz 320] [--epochs 5]
Runs ``yolo-prune train`` with pruning steps, reads the step times from the checkpoint's ``prune_state`` and the
epoch times from results.csv, and writes benchmarks/results/train_overhead.{json,md} with the command and machine.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from results_io import header, save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolo11n.yaml")
    ap.add_argument("--data", default="shapes-500")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    import torch
    from ultralytics import YOLO

    from yolo_prune import add_pruning

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        add_pruning(YOLO(a.model), prune=0.5, prune_steps=a.steps).train(
            data=a.data, epochs=a.epochs, imgsz=a.imgsz, workers=2, plots=False, project=tmp, name="o"
        )
        wall = time.perf_counter() - t0
        ckpt = torch.load(Path(tmp) / "o" / "weights" / "last.pt", weights_only=False)
        state = (ckpt.get("ema") or ckpt["model"]).prune_state  # the final checkpoint is stripped: ema -> model
        rows = list(csv.DictReader(open(Path(tmp) / "o" / "results.csv")))
    t = [0.0] + [float(r["time"]) for r in rows]
    epoch_s = [b - a_ for a_, b in zip(t, t[1:])]
    steps = [
        {"step": h["step"], "epoch": h["epoch"] + 1, "seconds": h["seconds"], "gflops": h["gflops"]}
        for h in state["history"]
    ]
    mean_epoch = sum(epoch_s) / len(epoch_s)
    out = {
        **header(),
        "model": a.model,
        "data": a.data,
        "imgsz": a.imgsz,
        "epochs": a.epochs,
        "epoch_seconds": [round(x, 1) for x in epoch_s],
        "steps": steps,
        "mean_step_s": round(sum(s["seconds"] for s in steps) / len(steps), 2),
        "mean_epoch_s": round(mean_epoch, 1),
        "step_share_of_epoch": round(sum(s["seconds"] for s in steps) / len(steps) / mean_epoch, 4),
        "wall_s": round(wall, 1),
        "gflops": {"before": state["base"]["gflops"], "after": steps[-1]["gflops"]},
    }
    body = [
        f"{a.model} on {a.data} at imgsz {a.imgsz}, {a.epochs} epochs, prune=0.5 in {len(steps)} steps: "
        f"mean step {out['mean_step_s']} s vs mean epoch {out['mean_epoch_s']} s "
        f"= {out['step_share_of_epoch']:.1%} of an epoch per step.",
        "",
        "| step | epoch | seconds | GFLOPs after |",
        "|---|---|---|---|",
        *(f"| {s['step']} | {s['epoch']} | {s['seconds']} | {s['gflops']:.2f} |" for s in steps),
        "",
        "Epoch seconds (incl. validation): " + ", ".join(str(x) for x in out["epoch_seconds"]),
    ]
    save("train_overhead", out, body)


if __name__ == "__main__":
    main()
