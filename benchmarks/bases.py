"""Bases trained to the end of their schedule: the whole LR decay, then Ultralytics' ``close_mosaic`` epochs.

Usage:
  python benchmarks/bases.py                                   # yolo11n, yolo26n, yolo11s, yolo26s in turn (2 cores)
  python benchmarks/bases.py --models yolo11n --device 0 --imgsz 640 --data shapes-2000   # the same on a lent GPU

Plain Ultralytics training (no pruning), one model at a time, every epoch of ``--epochs`` (no early stop:
``patience=0``), so the reference every pruned row is compared with is not still moving. A run that was stopped
continues from its ``last.pt`` (Ultralytics' resume). Each finished base writes
``benchmarks/results/bases_<model>.{json,md}`` (command, curve, seconds) and is kept in ``--work``.

Chosen for 2 CPU cores: the built-in shapes-500 at imgsz 128, batch 16, nbs 16 (one optimizer step per batch), 150
epochs (about 13 s an epoch for an n model at 1 torch thread).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from results_io import header, save


def _epochs(run: Path) -> int:
    """Epochs a run finished (results.csv rows, a repeated resumed epoch counted once)."""
    import csv

    with open(run / "results.csv") as f:
        return len({int(float(r["epoch"])) for r in csv.DictReader(f)})


def train_base(model: str, args: argparse.Namespace) -> dict:
    """Train ``model`` (``yolo11n`` ...) to the end of its schedule, or continue a stopped run; returns its record."""
    from ultralytics import YOLO

    from yolo_prune.datasets import resolve_data

    work = Path(args.work).resolve()
    run = work / f"{model}_base"
    meta = run / "base.json"
    if meta.is_file() and not args.record:
        return json.loads(meta.read_text())
    last = run / "weights" / "last.pt"
    t0 = time.perf_counter()
    if args.record:  # a finished run's record written again (nothing trained)
        if not (run / "results.csv").is_file() or _epochs(run) < args.epochs:
            print(f"bases.py --record: {model} has not finished its {args.epochs} epochs; skipped")
            return {}
    elif last.is_file():  # a stopped run: Ultralytics' own resume (same args, same schedule)
        YOLO(str(last)).train(resume=True)
    else:
        YOLO(f"{model}.yaml").train(
            data=resolve_data(args.data), imgsz=args.imgsz, batch=args.batch, nbs=args.batch, epochs=args.epochs,
            patience=0, device=args.device, workers=2 if args.device == "cpu" else 8, seed=0, plots=False,
            project=str(work), name=run.name, exist_ok=True,
        )  # fmt: skip
    seconds = round(time.perf_counter() - t0, 1)
    if args.record and meta.is_file():
        seconds = json.loads(meta.read_text())["seconds_this_session"]
    import csv

    with open(run / "results.csv") as f:  # a resumed run may repeat the epoch it stopped in: the last row counts
        rows = {int(float(r["epoch"])): r for r in csv.DictReader(f)}
    curve = [round(float(rows[e]["metrics/mAP50-95(B)"]), 4) for e in sorted(rows)]
    info = {
        "model": model, "data": args.data, "imgsz": args.imgsz, "batch": args.batch, "epochs": len(curve),
        "schedule": args.epochs, "seconds_this_session": seconds, "final_map50_95": curve[-1],
        "best_map50_95": max(curve), "curve": curve, "weights": str(run / "weights" / "best.pt"),
    }  # fmt: skip
    meta.write_text(json.dumps(info, indent=2))
    save(f"bases_{model}", {**header(), **info}, [
        f"{model} trained from scratch on {args.data} at imgsz {args.imgsz}, all {len(curve)} of {args.epochs} epochs "
        f"(LR decay to the end, close_mosaic's last 10 without mosaic): final val mAP50-95 {curve[-1]:.4f}, best "
        f"{max(curve):.4f}", "", "val mAP50-95 per epoch: " + ", ".join(map(str, curve))])  # fmt: skip
    if args.ship:  # the package's shipped models (yolo_prune/assets)
        from yolo_prune.assets import ASSETS

        shutil.copyfile(run / "weights" / "best.pt", ASSETS / f"{model}-shapes.pt")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="yolo11n,yolo26n,yolo11s,yolo26s")
    ap.add_argument("--data", default="shapes-500")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="runs/bases")
    ap.add_argument("--ship", action="store_true", help="copy each finished base to yolo_prune/assets/<model>-shapes.pt "
                    "(the s bases too: each is under 20 MB)")
    ap.add_argument("--record", action="store_true", help="write the record of finished bases again, training nothing")
    args = ap.parse_args()
    for model in args.models.split(","):
        train_base(model, args)


if __name__ == "__main__":
    main()
