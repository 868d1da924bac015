"""prune_latency=0.5 against prune=0.5 on each runtime: measured speed-up, GFLOPs and params kept.

Usage: python benchmarks/latency.py [--models yolo11n.yaml yolo26n.yaml] [--runtimes onnxruntime openvino]
       [--imgsz 640] [--threads 1] [--runs 50] [--accuracy accuracy_quick_equal_halves accuracy_quick_latency]
For each model and runtime: one-shot ``prune=0.5`` (GFLOPs) and ``prune_latency=0.5`` (latency on that runtime), each
measured against the unpruned model with ``yolo-prune benchmark`` on that runtime (base and pruned interleaved,
``--threads`` threads). With ``--accuracy``, the named accuracy result files (rows B of benchmarks/accuracy.py, the
quick profile) give mAP50-95 for a chart of latency against mAP50-95. Writes benchmarks/results/latency.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from results_io import RESULTS, header, save

FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["yolo11n.yaml", "yolo26n.yaml"])
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--accuracy", nargs="*", default=[], help="accuracy result names (rows B) for the mAP chart")
    a = ap.parse_args()
    from ultralytics.nn.tasks import DetectionModel

    from yolo_prune.deploy.benchmark import benchmark
    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.engine.targets import prune_model
    from yolo_prune.engine.runtime import Runtime

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in a.models:
            stem = Path(cfg).stem
            base = save_checkpoint(DetectionModel(cfg, verbose=False), Path(tmp) / f"{stem}.pt", {"task": "detect"})
            for rt_name in a.runtimes:
                for key in ("prune", "prune_latency"):
                    m = DetectionModel(cfg, verbose=False)
                    if key == "prune":
                        plan = prune_model(m, prune=0.5, imgsz=a.imgsz)
                    else:
                        rt = Runtime(rt_name, "cpu", a.threads, 1, a.imgsz)
                        plan = prune_model(m, prune_latency=0.5, runtime=rt, imgsz=a.imgsz)
                    pt = save_checkpoint(m, Path(tmp) / f"{stem}_{rt_name}_{key}.pt", {"task": "detect"})
                    fmt = FORMAT[rt_name]
                    res = benchmark(
                        str(pt), str(base), formats=[fmt], imgsz=a.imgsz, runs=a.runs, threads=a.threads,
                        project=tmp, name="b",
                    )  # fmt: skip
                    b, p, s = res["rows"]["base"], res["rows"]["pruned"], res["summary"]
                    rows.append(
                        {
                            "model": stem,
                            "runtime": rt_name,
                            "key": f"{key}=0.5",
                            "gflops": [b["gflops"], p["gflops"]],
                            "params": [b["params"], p["params"]],
                            "ms": [
                                round(b[f"{fmt}_latency"]["median_ms"], 2),
                                round(p[f"{fmt}_latency"]["median_ms"], 2),
                            ],
                            "speedup": s[f"{fmt}_speedup"],
                            "realization": s[f"{fmt}_realization"],
                            "planner": plan.latency,
                        }
                    )
    out = {**header(), "imgsz": a.imgsz, "threads": a.threads, "runs": a.runs, "rows": rows}
    body = [
        f"One-shot pruning of yaml-built models, imgsz {a.imgsz}, batch 1, {a.threads} thread(s), median of {a.runs} "
        "runs with base and pruned interleaved (`yolo-prune benchmark`).",
        "",
        "| model | runtime | key | GFLOPs kept | params kept | ms base -> pruned | measured speed-up | realization |",
        "|---|---|---|---|---|---|---|---|",
    ]
    body += [
        f"| {r['model']} | {r['runtime']} | `{r['key']}` | {r['gflops'][1] / r['gflops'][0]:.2f} | "
        f"{r['params'][1] / r['params'][0]:.2f} | {r['ms'][0]} -> {r['ms'][1]} | **{r['speedup']:.2f}x** | "
        f"{r['realization']:.2f} |"
        for r in rows
    ]
    acc = [json.loads((RESULTS / f"{n}.json").read_text()) for n in a.accuracy if (RESULTS / f"{n}.json").is_file()]
    if acc:
        body += ["", "mAP50-95 on the quick accuracy profile (row B of benchmarks/accuracy.py):", ""]
        body += ["| result | family | GFLOPs | ONNX RT ms | mAP50-95 |", "|---|---|---|---|---|"]
        for name, res in zip(a.accuracy, acc):
            for r in res["rows"]:
                body.append(f"| {name} | {r['family']} | {r['gflops']:.2f} | {r['onnx_ms']} | {r['map50_95']:.3f} |")
        chart(a.accuracy, acc)
    save("latency", out, body)


def chart(names: list[str], results: list[dict]) -> None:
    """mAP50-95 against measured ONNX Runtime latency, one marker per accuracy result and family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), tight_layout=True)
    for name, res, marker in zip(names, results, "os^D"):
        for r in res["rows"]:
            ax.scatter(r["onnx_ms"], r["map50_95"], marker=marker, label=f"{name}: {r['family']} {r['row']}")
    ax.set(
        xlabel="ONNX Runtime latency, ms (batch 1)", ylabel="mAP50-95", title="mAP50-95 vs latency (up-left is better)"
    )
    ax.legend(fontsize=7)
    fig.savefig(RESULTS / "latency.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
