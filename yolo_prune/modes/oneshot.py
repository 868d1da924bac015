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

from .. import __version__
from ..cfg import KEYS, MODE_KEYS, PruneConfig, PruneError, imgsz_value
from ..checkpoint import atomic_write_bytes, load_model, save_checkpoint
from ..datasets import calibration_batches, resolve_data
from ..engine.allocate import check_table
from ..engine.blocks import fold_model, needs_yolo_prune
from ..engine.graph import check_supported
from ..engine.importance import GRAD_BATCHES, GRADIENT_METHODS
from ..engine.latency import latency_line
from ..engine.pruner import layer_widths, model_info
from ..engine.runtime import Runtime, check_runtime
from ..engine.targets import prune_model
from ..engine.unstructured import compressed_mb, sparsify, sparsity
from ..train.schedule import warn_if_missed
from ..train.state import make_state


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


D = MODE_KEYS["prune"]  # the mode's defaults, as the CLI and the key reference give them


def prune_file(
    model: str | Path,
    imgsz: int = D["imgsz"],
    data: str | None = D["data"],
    batch: int = D["batch"],
    device: str | None = D["device"],
    project: str | Path = D["project"],
    name: str = D["name"],
    exist_ok: bool = D["exist_ok"],
    **prune_args: Any,
) -> dict[str, Any]:
    """Prune ``model`` (yaml or .pt) once and save it; returns the summary that was written.

    Everything is validated before anything is written, and both outputs are written atomically.

    Args:
        model: A model yaml or .pt checkpoint.
        imgsz: Image size GFLOPs are counted (and latency measured) at.
        data: Batches for the gradient criteria (``taylor``, ``hessian``).
        batch: Batch size of those batches.
        device: ``prune_runtime=torch``: the GPU to time on.
        project: Folder of the run folder.
        name: Run folder name (incremented like Ultralytics' when it exists).
        exist_ok: Write into an existing run folder.
        **prune_args: yolo-prune keys (``prune``, ``prune_ratio``, ``prune_method``, ...). In sparse modes ``prune``
            (or ``prune_ratio``) is the fraction of weights zeroed.

    Raises:
        PruneError: Bad keys, a missing model or data, or an unreachable latency target.
    """
    cfg = PruneConfig.from_keys(prune_args, mode="prune")
    imgsz, runtime = _check(cfg, imgsz, data, device)
    yolo = load_model(model)
    net = yolo.model
    check_supported(net)
    fold_model(net)  # one cv1 per block (older yolo-prune checkpoints hold split blocks): stable layer names
    if cfg.prune_sensitivity:
        check_table(cfg.prune_sensitivity, net)
    before, widths_before = model_info(net, imgsz), layer_widths(net)
    t0 = time.perf_counter()
    extra = _prune(net, cfg, imgsz, data, batch, runtime)
    elapsed = time.perf_counter() - t0
    after = model_info(net, imgsz)
    if cfg.structured and cfg.prune is not None:
        check_reached(cfg, before["gflops"], after["gflops"])
        warn_if_missed(cfg.prune, before["gflops"], after["gflops"], "prune")
    # what was done travels with the model (a plain dict, loadable anywhere): fine-tuning a sparse model keeps its zeros
    net.prune_state = make_state(cfg, [], before)
    summary = _summary(model, cfg, imgsz, before, after, widths_before, layer_widths(net), extra, elapsed)
    summary["needs_yolo_prune"] = needs_yolo_prune(net)  # blocks whose halves differ stay yolo-prune classes
    save_dir = Path(increment_path(Path(project) / name, exist_ok=exist_ok))
    train_args = (yolo.ckpt or {}).get("train_args") or {"model": str(model), "task": net.task, "imgsz": imgsz}
    weights = save_checkpoint(net, save_dir / "weights" / "pruned.pt", train_args, yolo_prune=summary)
    atomic_write_bytes(save_dir / "prune_summary.json", json.dumps(summary, indent=2).encode())
    summary["save_dir"] = str(save_dir)
    _log(summary, weights, elapsed)
    return summary


def _check(cfg: PruneConfig, imgsz, data, device) -> tuple[int, Runtime | None]:
    """The one-shot mode's own checks: data for gradient criteria, imgsz, and the latency runtime; (imgsz, runtime)."""
    if cfg.prune_method in GRADIENT_METHODS and cfg.structured and not data:
        raise PruneError(f"prune_method={cfg.prune_method} ranks by gradients; accepted: add data=<dataset>")
    imgsz = imgsz_value("imgsz", imgsz)
    runtime = None
    if cfg.prune_latency is not None:
        runtime = Runtime(cfg.prune_runtime, check_runtime(cfg.prune_runtime, device), cfg.prune_threads, 1, imgsz)
    return imgsz, runtime


REFUSE_MISS = 0.05  # a plan more than 5 points off its GFLOPs target is refused, not written


def check_reached(cfg: PruneConfig, before: float, after: float) -> None:
    """Refuse, before anything is written, a prune that landed more than 5 points off its GFLOPs target.

    Raises:
        PruneError: With the reduction this model reaches under the other keys (prune_ignore, prune_layers, ...).
    """
    reached = 1 - after / before
    if abs(reached - cfg.prune) > REFUSE_MISS:
        given = [k for k in ("prune_ignore", "prune_layers") if getattr(cfg, k)]
        given += ["prune_max_ratio"] if cfg.prune_global and cfg.prune_max_ratio != KEYS["prune_max_ratio"].default else []
        given += [f"prune_round={cfg.prune_round}"] if cfg.prune_round != KEYS["prune_round"].default else []
        why = " / ".join(given) or f"the output layers and prune_round={cfg.prune_round}'s minimum widths"
        raise PruneError(
            f"prune={cfg.prune:g} cannot be reached on this model: the plan removes {reached:.1%} of the GFLOPs "
            f"({why} leave no more); accepted: prune <= {max(reached, 0):.2f}"
            + (f", or change {' / '.join(k.split('=')[0] for k in given)}" if given else "")
        )


def _prune(net, cfg: PruneConfig, imgsz: int, data, batch: int, runtime: Runtime | None) -> dict[str, Any]:
    """Prune ``net`` in place; returns what the summary adds: the channel ratio, and latency or sparsity figures."""
    if not cfg.structured:
        amount = cfg.prune if cfg.prune is not None else cfg.prune_ratio
        sparsify(net, amount, cfg.prune_mode)
        return {"channel_ratio": 0.0, "sparsity": round(sparsity(net, cfg.prune_mode), 4),
                "compressed_mb": round(compressed_mb(net), 3)}  # fmt: skip
    batches = None
    if cfg.prune_method in GRADIENT_METHODS:
        batches = calibration_batches(resolve_data(data, net.task), imgsz, batch, GRAD_BATCHES, net)
    plan = prune_model(
        net, prune=cfg.prune, prune_ratio=cfg.prune_ratio, prune_method=cfg.prune_method,
        prune_round=cfg.prune_round, imgsz=imgsz, batches=batches, prune_latency=cfg.prune_latency, runtime=runtime,
        **cfg.engine_options,
    )  # fmt: skip
    extra: dict[str, Any] = {"channel_ratio": round(plan.ratio, 4)}
    if plan.latency:
        extra["latency"] = plan.latency
    return extra


def _summary(model, cfg: PruneConfig, imgsz, before, after, widths_before, widths_after, extra, elapsed) -> dict:
    """``prune_summary.json``: the target, the figures before and after, every layer's widths, the versions."""
    return {
        "model": str(model),
        "method": cfg.prune_method,
        "mode": cfg.prune_mode,
        "target": {k: getattr(cfg, k) for k in ("prune", "prune_ratio", "prune_latency")},
        "prune_round": cfg.prune_round,
        "imgsz": imgsz,
        "params_before": before["params"],
        "params_after": after["params"],
        "gflops_before": round(before["gflops"], 4),
        "gflops_after": round(after["gflops"], 4),
        "gflops_reduction": round(1 - after["gflops"] / before["gflops"], 4),
        **extra,
        "elapsed_s": round(elapsed, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "layers": {k: [widths_before[k], widths_after[k]] for k in widths_before},
        "versions": {
            "yolo_prune": __version__,
            "ultralytics": ultralytics.__version__,
            "torch_pruning": version("torch-pruning"),  # torch-pruning 1.6.0 has no __version__
        },
    }


def _log(summary: dict, weights: Path, elapsed: float) -> None:
    LOGGER.info(format_table(summary))
    if "latency" in summary:
        LOGGER.info(latency_line(summary["latency"]))
    if summary["needs_yolo_prune"]:
        LOGGER.warning(
            f"yolo-prune: {weights} needs yolo-prune installed to load: blocks "
            f"{', '.join(summary['needs_yolo_prune'])} have halves of different widths (prune_layers on one half, "
            f"or on an attention block, or inherited from the source checkpoint), which Ultralytics' own classes "
            f"cannot hold"
        )
    LOGGER.info(f"Pruned in {elapsed:.1f}s (peak RSS {summary['peak_rss_mb']:.0f} MB) -> {weights}")


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
