"""How a latency target is spread over the layers, and what each spread costs in accuracy after a short fine-tune.

Usage:
  python benchmarks/latency_allocation.py                        # yolo11s-shapes.pt to 0.348 of its 640 px latency
  python benchmarks/latency_allocation.py --variants one_ratio,ranked --epochs 30

The shipped s base is pruned once (one-shot) to ``--latency`` of its ONNX Runtime latency at ``--latency-imgsz``
(1 thread: the closed loop measures every plan), each variant with its own keys, then fine-tuned ``--epochs`` at 128
px on shapes-500, seed 0. Variants:
  one_ratio  the default: one channel ratio for every layer, searched on the latency table
  ranked     prune_global=True: least importance lost per predicted millisecond first
  ranked75   the same with prune_max_ratio=0.75 (every layer keeps a quarter)
  gflops     prune= at n's GFLOPs instead of a latency target (the GFLOPs plan, for reference)
The kept widths of every conv are recorded: they show where each spread takes its milliseconds.
Results: ``benchmarks/results/latency_allocation.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from results_io import header, save

P = {"data": "shapes-500", "imgsz": 128, "batch": 16, "nbs": 16, "runs": 100, "threads": 1}  # as benchmarks/bases.py
VARIANTS = {"one_ratio": {}, "ranked": {"prune_global": True},
            "ranked75": {"prune_global": True, "prune_max_ratio": 0.75}, "gflops": None}  # fmt: skip


def run(variant: str, args: argparse.Namespace, work: Path) -> dict:
    """Prune the base one-shot with the variant's keys, fine-tune, evaluate; the result is kept in ``work``."""
    from accuracy_shared import evaluate, train
    from ultralytics import YOLO

    from yolo_prune import prune_model
    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.engine.pruner import layer_widths, model_info
    from yolo_prune.engine.runtime import Runtime

    kept = work / f"{variant}_e{args.epochs}.json"
    if kept.exists():
        return json.loads(kept.read_text())
    net, sz = YOLO(args.model).model, args.latency_imgsz
    if VARIANTS[variant] is None:  # the GFLOPs plan
        plan = prune_model(net, prune=args.prune, imgsz=640)
    else:
        rt = Runtime("onnxruntime", "cpu", 1, 1, sz)
        plan = prune_model(net, prune_latency=args.latency, imgsz=sz, runtime=rt, **VARIANTS[variant])
    info = model_info(net, 640)
    work.mkdir(parents=True, exist_ok=True)
    start = save_checkpoint(net, work / f"{variant}_oneshot.pt", {"task": "detect", "imgsz": P["imgsz"]})
    t0 = time.perf_counter()
    best, _ = train(YOLO(str(start)), f"{variant}_e{args.epochs}", P, args.epochs, args.device, work)
    out = {"variant": variant, "keys": VARIANTS[variant] or {"prune": args.prune}, "epochs": args.epochs,
           "gflops": round(info["gflops"], 3), "params": info["params"], "latency": plan.latency,
           "train_s": round(time.perf_counter() - t0, 1), **evaluate(best, P, args.device),
           "widths": layer_widths(net)}  # fmt: skip
    kept.write_text(json.dumps(out, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path(__file__).parents[1] / "yolo_prune" / "assets" / "yolo11s-shapes.pt"))
    ap.add_argument("--latency", type=float, default=0.6523, help="prune_latency (n's latency at 640: 0.348 of s's)")
    ap.add_argument("--prune", type=float, default=0.6999, help="the gflops variant's prune= (n's GFLOPs)")
    ap.add_argument("--latency-imgsz", type=int, default=640)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="runs/latency_allocation")
    args = ap.parse_args()
    rows = [run(v, args, Path(args.work).resolve()) for v in args.variants.split(",")]
    body = [f"{Path(args.model).name} one-shot pruned to prune_latency={args.latency} at {args.latency_imgsz} px "
            f"(ONNX Runtime, 1 thread, closed loop), then fine-tuned {args.epochs} epochs on {P['data']} at "
            f"{P['imgsz']} px, seed 0.", "",
            "| variant | keys | GFLOPs@640 | params | measured speed-up | mAP50-95 |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        speed = f"{r['latency']['measured_speedup']:.2f}x" if r["latency"] else ""
        body.append(f"| {r['variant']} | {r['keys']} | {r['gflops']:.2f} | {r['params']:,} | {speed} | "
                    f"{r['map50_95']:.4f} |")  # fmt: skip
    convs = [c for c in rows[0]["widths"] if c.count(".") <= 3 and c.endswith(".conv")]  # each block's own convs
    body += ["", "Kept output channels per block conv (every conv's in the JSON):", "", "| conv | " + " | ".join(r["variant"] for r in rows) + " |",
             "|---|" + "---:|" * len(rows)]  # fmt: skip
    body += [f"| {c} | " + " | ".join(str(r["widths"].get(c, "")) for r in rows) + " |" for c in convs]
    save("latency_allocation", {**header(), "rows": rows}, body)


if __name__ == "__main__":
    main()
