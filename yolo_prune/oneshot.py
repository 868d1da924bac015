"""One-shot pruning of a model file: ``yolo-prune prune`` writes ``weights/pruned.pt`` and ``prune_summary.json``."""

from __future__ import annotations

import json
import resource
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import ultralytics
from ultralytics.utils import LOGGER
from ultralytics.utils.files import increment_path

from . import __version__
from .blocks import fold_model, needs_yolo_prune
from .callbacks import make_state
from .cfg import PruneError, check_prune_args
from .checkpoint import atomic_write_bytes, load_model, save_checkpoint
from .datasets import calibration_batches, resolve_data
from .engine import layer_widths, model_info, options_from_cfg, prune_model
from .graph import check_supported
from .importance import GRAD_BATCHES, GRADIENT_METHODS
from .schedule import warn_if_missed
from .latency import Runtime, check_runtime, latency_line
from .unstructured import compressed_mb, sparsify, sparsity


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def check_imgsz(imgsz: Any) -> int:
    """Validate ``imgsz`` (a positive multiple of 32)."""
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
        raise PruneError(f"imgsz={imgsz!r} is invalid; accepted: a positive multiple of 32, e.g. 640")
    return imgsz


def prune_file(
    model: str | Path,
    imgsz: int = 640,
    data: str | None = None,
    batch: int = 16,
    device: str | None = None,
    project: str | Path = "runs/prune",
    name: str = "exp",
    exist_ok: bool = False,
    **prune_args: Any,
) -> dict[str, Any]:
    """Prune ``model`` (yaml or .pt) once and save it; returns the summary that was written.

    ``prune_args`` are yolo-prune keys (``prune``, ``prune_ratio``, ``prune_method``, ...). ``data`` gives the batches
    that gradient criteria (``taylor``, ``hessian``) rank by. In ``prune_mode=unstructured`` ``prune`` (or
    ``prune_ratio``) is the fraction of weights zeroed. Everything is validated before anything is written, and the
    two outputs are written atomically, so bad input leaves no files.
    """
    cfg = check_prune_args(prune_args)
    mode = cfg["prune_mode"]
    targets = (cfg["prune"], cfg["prune_ratio"], cfg["prune_latency"])
    if mode != "2:4" and all(t is None for t in targets) and not cfg["prune_layers"]:
        raise PruneError(
            "prune is required; accepted: prune=<fraction of GFLOPs to remove, 0-1>, prune_ratio=<0-1> or "
            "prune_latency=<fraction of the latency to remove, 0-1>"
        )

    if cfg["prune_method"] in GRADIENT_METHODS and mode == "structured" and not data:
        raise PruneError(f"prune_method={cfg['prune_method']} ranks by gradients; accepted: add data=<dataset>")
    imgsz = check_imgsz(imgsz)
    runtime = None
    if cfg["prune_latency"] is not None:
        if mode != "structured":
            raise PruneError(f"prune_latency needs prune_mode=structured (zeros do not run faster); got {mode}")
        if cfg["prune_method"] == "sensitivity":
            raise PruneError(
                "prune_method=sensitivity allocates by GFLOPs; accepted with prune_latency: l2, taylor, ..."
            )
        runtime = Runtime(
            cfg["prune_runtime"], check_runtime(cfg["prune_runtime"], device), cfg["prune_threads"], 1, imgsz
        )
    yolo = load_model(model)
    net = yolo.model
    check_supported(net)
    fold_model(net)  # one cv1 per block (older yolo-prune checkpoints hold split blocks): stable layer names
    before, widths_before = model_info(net, imgsz), layer_widths(net)

    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if mode == "structured":
        batches = None
        if cfg["prune_method"] in GRADIENT_METHODS:
            batches = calibration_batches(resolve_data(data, net.task), imgsz, batch, GRAD_BATCHES, net)
        plan = prune_model(
            net,
            prune=cfg["prune"],
            ratio=cfg["prune_ratio"],
            method=cfg["prune_method"],
            round_to=cfg["prune_round"],
            imgsz=imgsz,
            batches=batches,
            latency=cfg["prune_latency"],
            runtime=runtime,
            **options_from_cfg(cfg),
        )
        channel_ratio = plan.ratio
        if plan.latency:
            extra["latency"] = plan.latency
    else:
        amount = cfg["prune"] if cfg["prune"] is not None else cfg["prune_ratio"]
        amount = amount or 0.5  # 2:4 is always half
        sparsify(net, amount, mode)
        channel_ratio = 0.0
        extra = {"sparsity": round(sparsity(net, mode), 4), "compressed_mb": round(compressed_mb(net), 3)}
    elapsed = time.perf_counter() - t0
    needs = needs_yolo_prune(net)  # prune_model folds; blocks whose halves differ stay yolo-prune classes
    after, widths_after = model_info(net, imgsz), layer_widths(net)
    if mode == "structured" and cfg["prune"] is not None:
        warn_if_missed(cfg["prune"], before["gflops"], after["gflops"], "prune")
    # what was done travels with the model (a plain dict, loadable anywhere): fine-tuning a sparse model keeps its zeros
    net.prune_state = make_state(
        {**cfg, "prune": cfg["prune"] or cfg["prune_ratio"] or (0.5 if mode == "2:4" else None)}, [], before
    )

    summary = {
        "model": str(model),
        "method": cfg["prune_method"],
        "mode": mode,
        "target": {"prune": cfg["prune"], "prune_ratio": cfg["prune_ratio"], "prune_latency": cfg["prune_latency"]},
        "prune_round": cfg["prune_round"],
        "imgsz": imgsz,
        "params_before": before["params"],
        "params_after": after["params"],
        "gflops_before": round(before["gflops"], 4),
        "gflops_after": round(after["gflops"], 4),
        "gflops_reduction": round(1 - after["gflops"] / before["gflops"], 4),
        "channel_ratio": round(channel_ratio, 4),
        **extra,
        "elapsed_s": round(elapsed, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "layers": {k: [widths_before[k], widths_after[k]] for k in widths_before},
        "needs_yolo_prune": needs,
        "versions": {
            "yolo_prune": __version__,
            "ultralytics": ultralytics.__version__,
            "torch_pruning": version("torch-pruning"),  # torch-pruning 1.6.0 has no __version__
        },
    }
    save_dir = Path(increment_path(Path(project) / name, exist_ok=exist_ok))
    train_args = (yolo.ckpt or {}).get("train_args") or {"model": str(model), "task": net.task, "imgsz": imgsz}
    weights = save_checkpoint(net, save_dir / "weights" / "pruned.pt", train_args, yolo_prune=summary)
    atomic_write_bytes(save_dir / "prune_summary.json", json.dumps(summary, indent=2).encode())
    summary["save_dir"] = str(save_dir)
    LOGGER.info(format_table(summary))
    if "latency" in summary:
        LOGGER.info(latency_line(summary["latency"]))
    if needs:
        LOGGER.warning(
            f"yolo-prune: {weights} needs yolo-prune installed to load: blocks {', '.join(needs)} have halves of "
            f"different widths (prune_global / prune_layers), which Ultralytics' own classes cannot hold"
        )
    LOGGER.info(f"Pruned in {elapsed:.1f}s (peak RSS {summary['peak_rss_mb']:.0f} MB) -> {weights}")
    return summary


def format_table(s: dict[str, Any]) -> str:
    """Short before/after table of params and GFLOPs."""
    rows = [
        ("params", f"{s['params_before']:,}", f"{s['params_after']:,}", s["params_after"] / s["params_before"] - 1),
        (f"GFLOPs@{s['imgsz']}", f"{s['gflops_before']:.2f}", f"{s['gflops_after']:.2f}", -s["gflops_reduction"]),
    ]
    if "sparsity" in s:
        rows.append(("sparsity", "0.0%", f"{s['sparsity']:.1%}", s["sparsity"]))
    lines = [f"{'':<12}{'before':>14}{'after':>14}{'change':>10}"]
    lines += [f"{k:<12}{b:>14}{a:>14}{c:>+10.1%}" for k, b, a, c in rows]
    return "\n".join(lines)
