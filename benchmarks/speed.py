"""CPU speed-up of pruned models (ONNX Runtime, OpenVINO) at batch 1, and its realization vs the GFLOPs ratio.

Usage: python benchmarks/speed.py [--models yolo11n.yaml yolo26n.yaml] [--rounds 8 16 32] [--imgsz 640] [--runs 100]
       [--threads 1]
For each model: the original and ``prune=0.5`` at each ``prune_round``, through ``yolo-prune benchmark`` (base and
pruned timed in alternation, 1 thread by default: on a shared 2-core machine 2 threads make the ratio noise). Writes
benchmarks/results/speed.{json,md} with the command and machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from results_io import header, save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["yolo11n.yaml", "yolo26n.yaml"])
    ap.add_argument("--rounds", nargs="+", type=int, default=[8, 16, 32])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    from ultralytics.nn.tasks import DetectionModel

    from yolo_prune.deploy.benchmark import benchmark
    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.engine.targets import prune_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in a.models:
            base = save_checkpoint(
                DetectionModel(cfg, verbose=False), Path(tmp) / f"{Path(cfg).stem}.pt", {"task": "detect"}
            )
            for r in a.rounds:
                m = DetectionModel(cfg, verbose=False)
                prune_model(m, prune=0.5, prune_round=r, imgsz=a.imgsz)
                pt = save_checkpoint(m, Path(tmp) / f"{Path(cfg).stem}_r{r}.pt", {"task": "detect"})
                res = benchmark(
                    str(pt), str(base), imgsz=a.imgsz, runs=a.runs, threads=a.threads, project=tmp, name="b"
                )
                b, p, s = res["rows"]["base"], res["rows"]["pruned"], res["summary"]
                rows.append(
                    {
                        "model": cfg,
                        "prune_round": r,
                        "gflops": [b["gflops"], p["gflops"]],
                        "gflops_ratio": s["gflops_ratio"],
                        "threads": res["threads"],
                        **{
                            f"{f}_ms": [
                                round(b[f"{f}_latency"]["median_ms"], 2),
                                round(p[f"{f}_latency"]["median_ms"], 2),
                            ]
                            for f in ("onnx", "openvino")
                        },
                        **{k: v for k, v in s.items() if k.endswith(("speedup", "realization"))},
                    }
                )
    out = {**header(), "imgsz": a.imgsz, "runs": a.runs, "batch": 1, "rows": rows}
    body = [
        f"batch 1, imgsz {a.imgsz}, median of {a.runs} runs after 10 warm-up, base and pruned interleaved, "
        f"{rows[0]['threads']} thread(s)",
        "",
        "| model | prune_round | GFLOPs base -> pruned | ONNX RT ms base -> pruned | ONNX speed-up (realization) "
        "| OpenVINO ms base -> pruned | OpenVINO speed-up (realization) |",
        "|---|---|---|---|---|---|---|",
    ]
    body += [
        f"| {r['model']} | {r['prune_round']} | {r['gflops'][0]:.2f} -> {r['gflops'][1]:.2f} | "
        f"{r['onnx_ms'][0]} -> {r['onnx_ms'][1]} | {r['onnx_speedup']:.2f}x ({r['onnx_realization']:.2f}) | "
        f"{r['openvino_ms'][0]} -> {r['openvino_ms'][1]} | {r['openvino_speedup']:.2f}x ({r['openvino_realization']:.2f}) |"
        for r in rows
    ]
    save("speed", out, body)


if __name__ == "__main__":
    main()
