"""``yolo-prune benchmark``: a pruned model against its original, side by side, in the formats edge devices run.

Latency is measured with each format's own runtime at batch 1 after warm-up (ONNX Runtime, OpenVINO, NCNN, LiteRT,
ExecuTorch and MNN on CPU; PyTorch CUDA fp16 on a GPU), with the thread count stated. Ultralytics' own ``benchmark`` mode
runs val() per format and reports one model at a time; this one compares two models and reports speed-ups against the
GFLOPs ratio (the realization), which is what a pruning decision needs.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics import YOLO
from ultralytics.utils import LOGGER
from ultralytics.utils.files import increment_path

from ..cfg import FORMATS, MODE_KEYS, PruneError
from ..checkpoint import atomic_write_bytes, load_model
from ..engine.heads import class_count
from ..engine.pruner import model_info
from ..engine.backends import check_backend
from ..engine.runtime import cpu_timed, exported_runner, time_interleaved
from .export import export

def torch_cuda_runner(weights: str, imgsz: int, device: str):
    """One batch-1 PyTorch fp16 inference on a CUDA device (fused model), synchronized."""
    model = load_model(weights).model.fuse().half().eval().to(f"cuda:{device}")
    x = torch.rand(1, 3, imgsz, imgsz, device=f"cuda:{device}", dtype=torch.half)

    def run():
        with torch.inference_mode():
            model(x)
        torch.cuda.synchronize(x.device)  # the device timed, not the current one

    return run


def _size_mb(path: str | Path) -> float:
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)


def describe(weights: str, formats, imgsz: int, data: str | None) -> dict[str, Any]:
    """One model's row without latency: params, GFLOPs, file sizes, exports (parity-checked), and with ``data`` the
    export's mAP50-95 (classify: top-1 accuracy, in the same column)."""
    net = load_model(weights).model
    info = model_info(net, imgsz)  # a distillation checkpoint counts its student
    row: dict[str, Any] = {
        "model": weights,
        "params": info["params"],
        "gflops": round(info["gflops"], 3),
        "pt_mb": _size_mb(weights),
    }
    for fmt in formats:
        if fmt == "torch-cuda":
            continue
        res = export(weights, format=fmt, imgsz=imgsz)
        row[f"{fmt}_file"] = res["file"]
        row[f"{fmt}_file_mb"] = _size_mb(res["file"])
        row[f"{fmt}_parity"] = res["max_abs_diff"]
        if data:
            metrics = YOLO(res["file"], task=net.task).val(data=data, imgsz=imgsz, batch=1, plots=False, verbose=False)
            score = metrics.top1 if net.task == "classify" else metrics.box.map
            row[f"{fmt}_map50_95"] = round(float(score), 4)
    return row


def architecture(weights: str) -> dict[str, Any]:
    """What a checkpoint is: its task, class count and family (from the yaml it was built from: a pruned model keeps
    the yaml of the architecture it came from)."""
    import re

    net = load_model(weights).model
    cfg = net.yaml if isinstance(getattr(net, "yaml", None), dict) else {}
    stem = Path(str(cfg.get("yaml_file", ""))).stem
    family = re.match(r"(yolov?\d+)", stem)
    return {"task": getattr(net, "task", None), "nc": class_count(net), "family": family.group(1) if family else stem}


def check_comparable(base: str, model: str) -> None:
    """Refuse a base that is not the pruned model's kind: another task, class count or family.

    Raises:
        PruneError: Naming what differs.
    """
    a, b = architecture(base), architecture(model)
    for key in ("task", "nc", "family"):
        if a[key] != b[key]:
            raise PruneError(
                f"base={base} is a {a['family']} {a['task']} model with nc={a['nc']}, model={model} a {b['family']} "
                f"{b['task']} model with nc={b['nc']}: the {key} differs; accepted: the checkpoint the pruned model "
                f"came from (same task, class count and family)"
            )


def check_formats(formats) -> list[str]:
    """``formats=`` as a list (a comma-separated string or a sequence), each timed here on its runtime.

    Raises:
        PruneError: A format yolo-prune cannot time, or one whose runtime is not installed.
    """
    from ..inputs import canonical_format

    given = [str(f).strip() for f in (formats.split(",") if isinstance(formats, str) else list(formats))]
    given = [f for f in given if f]
    bad = [f for f in given if canonical_format(f) not in FORMATS]
    if bad or not given:  # named as typed (an alias such as trt maps to a format not timed here)
        raise PruneError(f"formats={','.join(bad or given)} is invalid; accepted: {', '.join(FORMATS)} "
                         "(comma-separated; tflite for litert)")  # fmt: skip
    formats = list(dict.fromkeys(canonical_format(f) for f in given))
    for fmt in formats:
        check_backend(fmt, key="formats")
    return formats


D = MODE_KEYS["benchmark"]  # the mode's defaults, as the CLI and the key reference give them


def benchmark(
    model: str,
    base: str,
    formats=D["formats"].split(","),
    imgsz: int = D["imgsz"],
    runs: int = D["runs"],
    device: str = D["device"],
    data: str | None = D["data"],
    threads: int | None = D["threads"],
    project: str = D["project"],
    name: str = D["name"],
    exist_ok: bool = D["exist_ok"],
) -> dict[str, Any]:
    """Compare ``model`` (pruned) with ``base`` (original); write CSV, JSON and a PNG chart; return the results.

    Both models are exported first, then timed in alternation per format (see
    :func:`~yolo_prune.engine.runtime.time_interleaved`) with ``threads`` intra-op threads (default: torch's).

    Args:
        model: The pruned checkpoint.
        base: The checkpoint it was pruned from (same task, class count and family).
        formats: Export formats (:data:`yolo_prune.cfg.FORMATS`), each timed on its runtime; a CUDA ``device``
            adds PyTorch CUDA fp16.
        imgsz, runs, threads: Input size, timed runs per model and format, intra-op threads of the runtimes.
        device: ``cpu``, or a CUDA device for the PyTorch row.
        data: Dataset to validate both exports on (mAP50-95 columns).
        project, name, exist_ok: The run folder, as Ultralytics names them.

    Returns:
        The results (rows per model, speed-ups and realizations), also written as benchmark.{csv,json,png}.

    Raises:
        PruneError: Models that cannot be compared, or a device that is not here.
    """
    from ..inputs import check_device

    formats = check_formats(formats)
    check_comparable(base, model)
    device = check_device(device)
    threads = threads or torch.get_num_threads()
    formats = ["torch-cuda", *formats] if device != "cpu" else formats
    # exports go to a scratch folder, moved into the run folder at the end: Ultralytics writes them next to the .pt,
    # which may be a read-only install (the shipped models) or the user's weights folder
    scratch = Path(tempfile.mkdtemp(prefix="yolo-prune-benchmark-"))
    try:
        rows = {}
        for k, w in (("base", base), ("pruned", model)):
            local = scratch / k / Path(w).name
            local.parent.mkdir()
            shutil.copyfile(w, local)
            rows[k] = {**describe(str(local), formats, imgsz, data), "model": str(w)}
        result = _measure(rows, formats, imgsz, runs, device, threads)
        save_dir = Path(increment_path(Path(project) / name, exist_ok=exist_ok))
        _move_exports(rows, formats, save_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_results(result, formats, save_dir)
    LOGGER.info(format_table(result, formats) + f"\nResults saved to {save_dir}")
    result["save_dir"] = str(save_dir)
    return result


def _move_exports(rows: dict, formats, save_dir: Path) -> None:
    """Move each row's exports from the scratch folder into ``save_dir/<base|pruned>/`` (replacing a previous run's
    with ``exist_ok=True``), and point the rows at them."""
    save_dir.mkdir(parents=True, exist_ok=True)
    for k, row in rows.items():
        for fmt in formats:
            if f"{fmt}_file" in row:
                dst = save_dir / k / Path(row[f"{fmt}_file"]).name
                dst.parent.mkdir(exist_ok=True)
                if dst.is_dir():
                    shutil.rmtree(dst)
                else:
                    dst.unlink(missing_ok=True)
                shutil.move(row[f"{fmt}_file"], dst)
                row[f"{fmt}_file"] = str(dst)


def _measure(rows: dict, formats, imgsz: int, runs: int, device: str, threads: int) -> dict[str, Any]:
    """Time both models per format in alternation; the result dict with speed-ups and realizations."""
    for fmt in formats:
        if fmt == "torch-cuda":
            fns = {k: torch_cuda_runner(rows[k]["model"], imgsz, device) for k in rows}
        else:
            fns = {k: exported_runner(rows[k][f"{fmt}_file"], fmt, threads, imgsz) for k in rows}
        cpu = cpu_timed(device if fmt == "torch-cuda" else "cpu", threads)  # each row's latency names its clock
        for k, lat in time_interleaved(fns, runs, cpu=cpu).items():
            rows[k][f"{fmt}_latency"] = lat
    b, p = rows["base"], rows["pruned"]
    gflops_ratio = b["gflops"] / p["gflops"]
    summary = {"gflops_ratio": round(gflops_ratio, 3), "params_ratio": round(b["params"] / p["params"], 3)}
    for fmt in formats:
        s = b[f"{fmt}_latency"]["median_ms"] / p[f"{fmt}_latency"]["median_ms"]
        summary[f"{fmt}_speedup"] = round(s, 3)
        summary[f"{fmt}_realization"] = round(s / gflops_ratio, 3)
    result = {
        "imgsz": imgsz,
        "runs": runs,
        "batch": 1,
        "threads": threads,
        "device": device,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "rows": rows,
        "summary": summary,
    }
    return result


def _table_rows(result: dict, formats) -> list[list[str]]:
    b, p, s = result["rows"]["base"], result["rows"]["pruned"], result["summary"]
    out = [
        ["", "base", "pruned", "ratio"],
        ["params", f"{b['params']:,}", f"{p['params']:,}", f"{s['params_ratio']:.2f}x"],
        [f"GFLOPs@{result['imgsz']}", f"{b['gflops']:.2f}", f"{p['gflops']:.2f}", f"{s['gflops_ratio']:.2f}x"],
        [".pt MB", f"{b['pt_mb']:.1f}", f"{p['pt_mb']:.1f}", ""],
    ]
    for fmt in formats:
        lb, lp = b[f"{fmt}_latency"], p[f"{fmt}_latency"]
        out.append(
            [
                f"{fmt} ms (median/p90)",
                f"{lb['median_ms']:.1f}/{lb['p90_ms']:.1f}",
                f"{lp['median_ms']:.1f}/{lp['p90_ms']:.1f}",
                f"{s[f'{fmt}_speedup']:.2f}x (realization {s[f'{fmt}_realization']:.2f})",
            ]
        )
        if f"{fmt}_map50_95" in b:
            out.append([f"{fmt} mAP50-95", f"{b[f'{fmt}_map50_95']:.4f}", f"{p[f'{fmt}_map50_95']:.4f}", ""])
    return out


def _cpu_clock(result: dict, formats) -> bool:
    """Whether every CPU runtime's row was read as thread CPU time (a GPU row is always wall time)."""
    lat = [r[f"{f}_latency"] for r in result["rows"].values() for f in formats if f != "torch-cuda"]
    return bool(lat) and all(v.get("clock") == "cpu" for v in lat)


def format_table(result: dict, formats) -> str:
    """The side-by-side table as text, with the measurement conditions."""
    rows = _table_rows(result, formats)
    widths = [max(len(r[i]) for r in rows) + 2 for i in range(4)]
    lines = ["".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append(
        f"batch 1, imgsz {result['imgsz']}, {result['runs']} runs each after 10 warm-up, base and pruned "
        f"interleaved, {result['threads']} thread{'s' if result['threads'] != 1 else ''}"
        + (" (thread CPU time: the time other processes held the core left out)" if _cpu_clock(result, formats) else "")
        + f", {result['machine']}"
    )
    return "\n".join(lines)


def write_results(result: dict, formats, save_dir: Path) -> None:
    """benchmark.csv, benchmark.json and benchmark.png (latency per format, base vs pruned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    save_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(save_dir / "benchmark.json", json.dumps(result, indent=2).encode())
    with open(save_dir / "benchmark.csv.tmp", "w", newline="") as f:
        csv.writer(f).writerows(_table_rows(result, formats))
    os.replace(save_dir / "benchmark.csv.tmp", save_dir / "benchmark.csv")
    fig, ax = plt.subplots(figsize=(2 + 2 * len(formats), 4), tight_layout=True)
    x = np.arange(len(formats))
    for i, (k, color) in enumerate((("base", "#999999"), ("pruned", "#1f77b4"))):
        med = [result["rows"][k][f"{f}_latency"]["median_ms"] for f in formats]
        bars = ax.bar(
            x + (i - 0.5) * 0.38, med, 0.38, label=f"{k} ({result['rows'][k]['gflops']:.1f} GFLOPs)", color=color
        )
        ax.bar_label(bars, fmt="%.1f")
    ax.set_xticks(x, [f"{f}\n{result['summary'][f'{f}_speedup']:.2f}x" for f in formats])
    ax.set_ylabel("median latency, ms (batch 1)")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    n = result["threads"]
    ax.set_title(f"imgsz {result['imgsz']}, {n} thread{'s' if n != 1 else ''}")
    ax.legend()
    fig.savefig(save_dir / "benchmark.png", dpi=120)
    plt.close(fig)
