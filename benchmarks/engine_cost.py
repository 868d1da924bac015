"""Engine cost: time and peak RSS of one-shot ``yolo-prune prune`` per model, each in a fresh process.

Usage: python benchmarks/engine_cost.py [--models yolo11n.yaml yolo11m.yaml ...] [--prune 0.5] [--imgsz 640]
Writes benchmarks/results/engine_cost.{json,md} with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import header, save


def run(model: str, prune: float, imgsz: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "yolo_prune",
            "prune",
            f"model={model}",
            f"prune={prune}",
            f"imgsz={imgsz}",
            f"project={tmp}",
            "name=exp",
        ]
        t0 = time.perf_counter()
        r = subprocess.run(
            ["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"}
        )
        wall = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(f"{model}: {r.stderr[-2000:]}")
        s = json.loads((Path(tmp) / "exp" / "prune_summary.json").read_text())
    return {
        "model": model,
        "engine_s": s["elapsed_s"],
        "engine_peak_rss_mb": s["peak_rss_mb"],
        "process_peak_rss_mb": round(int(r.stderr.strip().splitlines()[-1]) / 1024, 1),
        "command_wall_s": round(wall, 2),
        "gflops_before": s["gflops_before"],
        "gflops_after": s["gflops_after"],
        "gflops_reduction": s["gflops_reduction"],
        "params_before": s["params_before"],
        "params_after": s["params_after"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["yolo11n.yaml", "yolo11m.yaml"])
    ap.add_argument("--prune", type=float, default=0.5)
    ap.add_argument("--imgsz", type=int, default=640)
    a = ap.parse_args()
    rows = [run(m, a.prune, a.imgsz) for m in a.models]
    out = {**header(), "rows": rows}
    save(
        "engine_cost",
        out,
        [
            "| model | engine s | engine peak RSS MB | process peak RSS MB | command wall s | GFLOPs before | after "
            "| reduction |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {r['model']} | {r['engine_s']:.2f} | {r['engine_peak_rss_mb']:.0f} | {r['process_peak_rss_mb']:.0f} "
                f"| {r['command_wall_s']:.1f} | {r['gflops_before']:.2f} | {r['gflops_after']:.2f} "
                f"| {r['gflops_reduction']:.1%} |"
                for r in rows
            ),
        ],
    )


if __name__ == "__main__":
    main()
