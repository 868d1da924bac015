"""What a run reports: the per-epoch size columns, and at the end the before/after table of its pruning.

The columns (``model/params_M``, ``model/GFLOPs``, ``model/sparsity``) go into ``trainer.metrics``, the dict results.csv
and every integration log read metrics from.
"""

from __future__ import annotations

from ultralytics.utils import LOGGER

from ..checkpoint import student_of
from ..engine.blocks import needs_yolo_prune
from ..engine.unstructured import sparsity
from .latency_run import report_line
from .state import zeroes_weights
from .step import MAP_KEYS


def epoch_columns(info: dict, state: dict | None, model) -> dict:
    """This epoch's size columns (results.csv writes %.6g, hence the rounding)."""
    m = {"model/params_M": round(info["params"] / 1e6, 6), "model/GFLOPs": round(info["gflops"], 4)}
    if state and zeroes_weights(state):
        m["model/sparsity"] = round(sparsity(model, state["cfg"]["prune_mode"]), 4)
    return m


def reached(state: dict, now: dict, model) -> str:
    """How far the model got: its sparsity, or its GFLOPs and the share removed."""
    if zeroes_weights(state):
        return f"sparsity {sparsity(model, state['cfg']['prune_mode']):.1%}"
    return f"{now['gflops']:.2f} GFLOPs, {1 - now['gflops'] / state['base']['gflops']:.1%} removed"


def warn_unfinished(trainer, state: dict, now: dict) -> None:
    """A warning naming why a schedule did not finish, and what the model reached."""
    n = len(state["schedule"])
    if state["done"] >= n:
        return
    if trainer.args.time and trainer.epoch + 1 >= trainer.epochs:
        why = f"time={trainer.args.time} ended the run"
    elif trainer.epoch + 1 < trainer.epochs:
        why = f"stopped early: early stopping (patience={trainer.args.patience}) or an external stop"
    else:
        why = "the last epoch came first"
    target = state["cfg"]["prune"] if state["cfg"]["prune"] is not None else state["latency"]["fraction"]
    LOGGER.warning(
        f"yolo-prune: the prune schedule did not finish: {state['done']}/{n} steps ran before training stopped "
        f"at epoch {trainer.epoch + 1} ({why}); the model has {reached(state, now, student_of(trainer.model))} of "
        f"the {target:.0%} asked"
    )


def warn_needs_plugin(trainer) -> None:
    """Checkpoints whose blocks have halves of different widths load only where yolo-prune is installed."""
    needs = needs_yolo_prune(student_of(trainer.model))
    if needs:
        LOGGER.warning(
            f"yolo-prune: {trainer.best.name} and {trainer.last.name} need yolo-prune installed to load: blocks "
            f"{', '.join(needs)} have halves of different widths (prune_layers on one half or on an "
            "attention block, or inherited from the starting checkpoint)"
        )


def _score(v) -> str:
    return f"{v:>10.4f}" if isinstance(v, (int, float)) else f"{'':>10}"


def summary(trainer, state: dict, now: dict) -> str:
    """The before / each step / after table, with the metric's source and the latency line of a latency run."""
    model = student_of(trainer.model)
    col = "sparsity" if zeroes_weights(state) else "reduction"
    metric = {"classify": "top1", "detect": "mAP50-95"}.get(trainer.args.task, "mAP50-95(B)")
    end = next((trainer.metrics[k] for k in MAP_KEYS if k in (getattr(trainer, "metrics", None) or {})), None)
    base = state["base"]
    lines = [f"{'':>8}{'epoch':>7}{'params':>12}{'GFLOPs':>9}{col:>11}{metric:>10}{'seconds':>9}"]
    lines.append(
        f"{'before':>8}{'':>7}{base['params']:>12,}{base['gflops']:>9.2f}{0:>11.1%}{_score(base.get('map50_95'))}"
        f"{'':>9}"
    )
    for h in state["history"]:
        red = h["sparsity"] if "sparsity" in h else 1 - h["gflops"] / base["gflops"]
        lines.append(
            f"{'step ' + str(h['step']):>8}{h['epoch'] + 1:>7}{h['params']:>12,}{h['gflops']:>9.2f}{red:>11.1%}"
            f"{'':>10}{h['seconds']:>9.1f}"
        )
    red = sparsity(model, state["cfg"]["prune_mode"]) if zeroes_weights(state) else 1 - now["gflops"] / base["gflops"]
    lines.append(
        f"{'after':>8}{trainer.epoch + 1:>7}{now['params']:>12,}{now['gflops']:>9.2f}{red:>11.1%}{_score(end)}{'':>9}"
    )
    source = f"{trainer.best.name}'s final validation" if trainer.best.exists() else "the last epoch's validation"
    lines.append(
        f"{metric} before: the model just before step 1" + (f"; after: {source}" if end is not None else "")
    )
    last = state["history"][-1].get("latency")
    if last and "measured_ms" in last:
        lines.append(report_line(state, last).replace("yolo-prune: ", ""))
    return "yolo-prune summary\n" + "\n".join(lines)
