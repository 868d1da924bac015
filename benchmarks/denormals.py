"""Do denormal floats skew CPU timing? The same ONNX graphs timed with and without flushing them to zero.

Usage:
  python benchmarks/denormals.py --base /tmp/bench/bases/yolo26n_base/weights/best.onnx \
      --models /tmp/bench/cross2/yolo26_NG_30_e30_s1/weights/best.onnx,... --name denormals

Two runs of one pruned architecture (the same graph, other weights) should time alike; a gap between them is the
weights' doing. Each model is timed on ONNX Runtime at 1 thread, interleaved with the base on one random input,
``--passes`` times, in three settings: as is; with ONNX Runtime's ``session.set_denormal_as_zero``; with
``torch.set_flush_denormal(True)``, which sets the flush-to-zero flags of the calling thread (where ONNX Runtime
computes at 1 thread). Written by hand: neither library reports the effect. Results: ``benchmarks/results/<name>.*``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from results_io import header, save


def sessions(files: dict[str, str], daz: bool) -> dict:
    """One ONNX Runtime session per file at 1 thread, with ``session.set_denormal_as_zero`` as asked."""
    import onnxruntime as ort

    out = {}
    for k, f in files.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.add_session_config_entry("session.set_denormal_as_zero", "1" if daz else "0")
        out[k] = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
    return out


def ratios(sess: dict, x, runs: int) -> dict[str, float]:
    """Median ms of each session over ``runs`` interleaved calls, as a ratio to the base's."""
    name = sess["base"].get_inputs()[0].name
    for s in sess.values():
        for _ in range(5):
            s.run(None, {name: x})
    t: dict[str, list[float]] = {k: [] for k in sess}
    for _ in range(runs):
        for k, s in sess.items():
            t0 = time.perf_counter()
            s.run(None, {name: x})
            t[k].append((time.perf_counter() - t0) * 1000)
    med = {k: statistics.median(v) for k, v in t.items()}
    return {k: med[k] / med["base"] for k in sess if k != "base"}


def main() -> None:
    import numpy as np
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the unpruned model's ONNX file")
    ap.add_argument("--models", required=True, help="comma-separated ONNX files, timed against the base")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--name", default="denormals")
    args = ap.parse_args()
    files = {"base": args.base} | {Path(f).parent.parent.name: f for f in args.models.split(",")}
    x = np.random.default_rng(0).random((1, 3, args.imgsz, args.imgsz), dtype=np.float32)
    out = {}
    for mode in ("as is", "set_denormal_as_zero", "set_flush_denormal"):
        torch.set_flush_denormal(mode == "set_flush_denormal")
        try:
            sess = sessions(files, daz=mode == "set_denormal_as_zero")
            passes = [ratios(sess, x, args.runs) for _ in range(args.passes)]
        finally:
            torch.set_flush_denormal(False)
        out[mode] = {k: [round(p[k], 3) for p in passes] for k in passes[0]}
    body = [f"ONNX Runtime, 1 thread, imgsz {args.imgsz}, one random input; each cell: the model's median latency over "
            f"the base's, {args.passes} passes of {args.runs} interleaved calls.", "",
            "| model | " + " | ".join(out) + " |", "|---|" + "---:|" * len(out)]  # fmt: skip
    for k in out["as is"]:
        body.append(f"| {k} | " + " | ".join(", ".join(f"{v:.3f}" for v in out[m][k]) for m in out) + " |")
    save(args.name, {**header(), "files": files, "ratios": out}, body)


if __name__ == "__main__":
    main()
