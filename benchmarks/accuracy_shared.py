"""What the accuracy benchmarks share: training a row, evaluating it, and the converged bases.

``accuracy.py`` (the profiles and rows) and ``accuracy_converged.py`` (the converged matrix) both import from here, so
neither imports the other.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from results_io import header, save


def width_yaml(family: str, scale: str, gflops: float, imgsz: int, out: Path) -> tuple[Path, float]:
    """Write a yaml of ``family`` at the smallest width multiplier whose GFLOPs@640 are >= ``gflops``."""
    import yaml
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load
    from ultralytics.utils.torch_utils import get_flops

    cfg = yaml_model_load(f"{family}{scale}.yaml")
    depth, width, max_ch = cfg["scales"][scale]

    def build(w: float) -> dict:
        c = copy.deepcopy(cfg)
        c["scales"], c["scale"] = {scale: [depth, w, max_ch]}, scale
        c.pop("yaml_file", None)
        return c

    lo, hi = width * 0.3, width
    for _ in range(12):  # GFLOPs grow with width; channels round to multiples of 8, so this is a step function
        mid = (lo + hi) / 2
        g = get_flops(DetectionModel(build(mid), nc=6, verbose=False), 640)
        lo, hi = (mid, hi) if g < gflops else (lo, mid)
    w = round(hi, 4)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(build(w), sort_keys=False))
    return out, w


def onnx_latency(weights: Path, imgsz: int, runs: int, threads: int | None = None) -> float:
    """Median ONNX Runtime CPU latency (ms) at batch 1, with yolo-prune's benchmark runner."""
    import torch
    from ultralytics import YOLO

    from yolo_prune.engine.runtime import cpu_timed, exported_runner, time_interleaved

    f = YOLO(str(weights)).export(format="onnx", imgsz=imgsz, simplify=True)
    n = threads or torch.get_num_threads()  # the threads it runs with decide the clock, as in yolo-prune benchmark
    fn = exported_runner(f, "onnx", n, imgsz)
    return round(time_interleaved({"x": fn}, runs, cpu=cpu_timed("cpu", n))["x"]["median_ms"], 2)


def evaluate(weights: Path, p: dict, device: str) -> dict:
    """params, GFLOPs@640, mAP50, mAP50-95 and ONNX latency of a checkpoint."""
    from ultralytics import YOLO

    from yolo_prune.datasets import resolve_data
    from yolo_prune.engine.pruner import model_info

    yolo = YOLO(str(weights))
    info = model_info(yolo.model, 640)
    m = yolo.val(data=resolve_data(p["data"]), imgsz=p["imgsz"], batch=p["batch"], device=device, plots=False)
    return {
        "params": info["params"],
        "gflops": round(info["gflops"], 3),
        "map50": round(float(m.box.map50), 4),
        "map50_95": round(float(m.box.map), 4),
        "onnx_ms": onnx_latency(weights, p["imgsz"], p["runs"], p.get("threads")),
    }


def train(model, name: str, p: dict, epochs: int, device: str, work: Path, **keys) -> tuple[Path, float]:
    """Train with yolo-prune (plugin keys split off); returns best.pt and the seconds it took."""
    from yolo_prune import add_pruning
    from yolo_prune.cfg import mode_keys

    plugin = {k: keys.pop(k) for k in list(keys) if k in mode_keys("train")}
    args = {
        "data": p["data"],
        "imgsz": p["imgsz"],
        "batch": p["batch"],
        "nbs": p["nbs"],
        "epochs": epochs,
        "device": device,
        "workers": 2 if device == "cpu" else 8,
        "seed": 0,
        "plots": False,
        "exist_ok": True,
        "project": str(work),
        "name": name,
        **keys,
    }
    t0 = time.perf_counter()
    add_pruning(model, **plugin).train(**args)
    return work / name / "weights" / "best.pt", round(time.perf_counter() - t0, 1)


class Plateau:
    """Stop training once val mAP50-95 gains less than ``tol`` over the last ``window`` epochs (the curve is kept)."""

    def __init__(self, window: int, tol: float):
        self.window, self.tol, self.curve = window, tol, []

    def __call__(self, trainer) -> None:  # on_fit_epoch_end
        if getattr(self, "epoch", None) == trainer.epoch:  # the final validation of best.pt fires it once more
            return
        self.epoch = trainer.epoch
        self.curve.append(round(float(trainer.metrics.get("metrics/mAP50-95(B)", 0.0)), 4))
        c, w = self.curve, self.window
        if len(c) > 2 * w and max(c[-w:]) - max(c[:-w]) < self.tol:
            trainer.stop = True


def converged_base(family: str, p: dict, device: str, work: Path) -> tuple[Path, float]:
    """The converged base: trained once until the plateau rule holds, copied to ``yolo_prune/assets/`` with its curve."""
    import shutil

    from ultralytics import YOLO

    from yolo_prune.assets import ASSETS

    name = f"{family}_base"
    best, meta = work / name / "weights" / "best.pt", work / name / "base.json"
    if not (best.exists() and meta.exists()):
        stop = Plateau(*p["plateau"])
        model = YOLO(f"{family}{p['scale']}.yaml")
        model.add_callback("on_fit_epoch_end", stop)
        best, s = train(model, name, p, p["epochs"], device, work)
        epochs = len(stop.curve)
        info = {"family": family, "epochs": epochs, "seconds": s, "curve": stop.curve,
                "converged": epochs < p["epochs"], "best_map50_95": max(stop.curve)}  # fmt: skip
        meta.write_text(json.dumps(info, indent=2))
        if p.get("ship"):
            shutil.copyfile(best, ASSETS / f"{family}{p['scale']}-shapes.pt")
        save(f"accuracy_{p['name']}_base_{family}", {**header(), "profile": p, **info}, [
            f"{family}{p['scale']} trained from scratch on {p['data']} at imgsz {p['imgsz']}: {epochs} epochs "
            f"({'plateau reached' if info['converged'] else 'stopped at the epoch limit'}), {s:.0f} s, best val "
            f"mAP50-95 {info['best_map50_95']:.4f}", "", "val mAP50-95 per epoch: " + ", ".join(map(str, stop.curve))])  # fmt: skip
    return best, json.loads(meta.read_text())["seconds"]
