"""The ``yolo-prune`` command: ``yolo-prune MODE key=value ...``, the same syntax as ``yolo``.

Own modes are handled here; ``val``, ``predict``, ``export`` and ``track`` go to Ultralytics' entrypoint unchanged
(pruned checkpoints load there like any other), after built-in dataset names are resolved to their yaml.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .cfg import PRUNE_DEFAULTS, PruneError

PASSTHROUGH = ("val", "predict", "track")
# deprecated keys Ultralytics still maps (half/int8 -> quantize, end2end -> nms) but no longer lists in default.yaml
LEGACY_KEYS = {"half": None, "int8": None, "end2end": None}
BENCHMARK_KEYS = {
    "model": None,
    "base": None,
    "data": None,
    "imgsz": 640,
    "formats": "onnx,openvino",
    "device": "cpu",
    "runs": 100,
    "threads": None,  # intra-op threads of ONNX Runtime / OpenVINO (default: torch's count); 1 for stable ratios
    "project": "runs/benchmark",
    "name": "exp",
    "exist_ok": False,
}
MODEL_KEYS = ("model", "base", "distill_model")  # keys that name a model file
TRAIN_PLUGIN_KEYS = (*PRUNE_DEFAULTS, "prune_steps", "prune_start", "prune_end", "prune_distill")
PRUNE_KEYS = {
    "model": None,
    "imgsz": 640,
    "data": None,  # batches for the gradient criteria (taylor, hessian)
    "batch": 16,
    "device": None,  # prune_runtime=torch: the GPU to time on (device=cpu for CPU timing)
    "project": "runs/prune",
    "name": "exp",
    "exist_ok": False,
    **PRUNE_DEFAULTS,
}
SENSITIVITY_KEYS = {
    "model": None,
    "data": None,
    "ratios": "0.1,0.3,0.5",
    "imgsz": 640,
    "batch": 16,
    "layers": None,
    "prune_method": "l2",
    "prune_round": PRUNE_DEFAULTS["prune_round"],
    "device": "cpu",
    "project": "runs/sensitivity",
    "name": "exp",
    "exist_ok": False,
}

HELP = f"""yolo-prune: channel pruning for Ultralytics YOLO. Usage: yolo-prune MODE key=value ...

  yolo-prune train model=yolo11n.yaml data=shapes epochs=30 prune=0.5 [prune_steps=4] [prune_start=E0] [prune_end=E1]
      [prune_method=l2] [prune_round=16] [pruning keys below] [any 'yolo train' key]; resume=True continues a schedule
      prune_distill=True: distill from the model as it was before its first step (weight: dis=); or distill_model=t.pt
      model=yolo11n-shapes.pt | yolo26n-shapes.pt: shipped models trained to convergence on data=shapes-500 imgsz=128

  yolo-prune prune model=yolo11n.yaml prune=0.5 [imgsz=640] [data=shapes] [project=runs/prune] [name=exp] [pruning keys]
      one-shot prune; writes <project>/<name>/weights/pruned.pt and prune_summary.json
  yolo-prune sensitivity model=trained.pt data=shapes [ratios=0.1,0.3,0.5] [imgsz=640] [layers=2,4] [prune_method=l2]
      prunes each layer alone at each ratio and validates; writes sensitivity.csv and sensitivity.png

  latency: prune_latency=0.5 (instead of prune: the fraction of the measured latency to remove)
      prune_runtime=onnxruntime|openvino|torch  prune_threads=N  device=0 (torch: CUDA fp16)
  pruning keys: prune_method=l1|l2|bn|taylor|lamp|fpgm|hessian|random|sensitivity  prune_round=16
      prune_global=False prune_max_ratio=0.9  prune_ignore=0,22  prune_layers=ratios.yaml  prune_sparsity=0.0
      prune_mode=structured|unstructured|2:4  prune_sensitivity=sensitivity.csv
  yolo-prune export model=pruned.pt format=onnx|openvino|engine [imgsz] [dynamic] [simplify] [nms] [quantize=16|8] [data]
      Ultralytics' exporter, then a parity check of the exported model against PyTorch (fails over the tolerance)
  yolo-prune benchmark model=pruned.pt base=original.pt [data=shapes] [imgsz=640] [formats=onnx,openvino] [device=cpu|0]
      [runs=100] [threads=1]  side-by-side latency / GFLOPs / size / mAP table (base and pruned timed in
      alternation), saved as CSV, JSON and PNG
  yolo-prune {{{"|".join(PASSTHROUGH)}}} model=pruned.pt ...   same keys as 'yolo'; data=shapes uses the built-in dataset
  yolo-prune version | help

  Every task: model=yolo11n-seg.yaml | -pose | -obb | -cls (YOLOv8 / YOLO11 / YOLO26); data=shapes follows the task
"""


def parse_args(args: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split ``MODE key=value ...`` into the mode and a dict of typed values (Ultralytics' own parsing)."""
    from ultralytics.cfg import merge_equals_args, parse_key_value_pair

    mode, overrides = None, {}
    for a in merge_equals_args(args):
        if "=" in a:
            try:
                k, v = parse_key_value_pair(a)
            except AssertionError:
                raise PruneError(f"'{a}' has no value; accepted: key=value") from None
            overrides[k] = v
        elif mode is None:
            mode = a
        else:
            raise PruneError(f"'{a}' is not key=value; accepted: yolo-prune MODE key=value ...")
    return mode, overrides


def check_keys(overrides: dict[str, Any], accepted: dict[str, Any], mode: str) -> None:
    """One-line PruneError for the first key not in ``accepted``, with the closest valid key."""
    for k in overrides:
        if k not in accepted:
            close = difflib.get_close_matches(k, accepted, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise PruneError(f"'{k}' is not a valid key for 'yolo-prune {mode}'; {hint}accepted: {', '.join(accepted)}")


def _prune(overrides: dict[str, Any]) -> None:
    from .oneshot import prune_file

    check_keys(overrides, PRUNE_KEYS, "prune")
    if overrides.get("model") is None:
        raise PruneError("model is required; accepted: model=<yaml or .pt>, e.g. model=yolo11n.yaml")
    prune_file(**overrides)


def _sensitivity(overrides: dict[str, Any]) -> None:
    from .sensitivity import sensitivity_run

    check_keys(overrides, SENSITIVITY_KEYS, "sensitivity")
    args = {**SENSITIVITY_KEYS, **overrides}
    if not args["model"]:
        raise PruneError("model is required; accepted: model=<.pt checkpoint>")
    sensitivity_run(**args)


def _train(overrides: dict[str, Any]) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils.files import get_latest_run

    from .callbacks import DISTILL_BOTH, DISTILL_NO_TARGET, DISTILL_TASK, check_train_args
    from .checkpoint import load_model
    from .model import add_pruning
    from .schedule import check_patience, make_schedule

    plugin = {k: overrides.pop(k) for k in TRAIN_PLUGIN_KEYS if k in overrides}
    check_keys(overrides, DEFAULT_CFG_DICT, "train")
    cfg = check_train_args(plugin)
    resume = overrides.get("resume")
    model = overrides.pop("model", None)
    if resume and model is None:  # like 'yolo train resume': the latest run, or resume=path/to/last.pt
        model = resume if isinstance(resume, str) else get_latest_run()
        overrides["resume"] = True
    if not model:
        raise PruneError("model is required; accepted: model=<yaml or .pt>, e.g. model=yolo11n.yaml")
    target = cfg["prune"] if cfg["prune"] is not None else cfg["prune_latency"]
    if cfg["prune_distill"] and overrides.get("distill_model") and not resume:
        raise PruneError(DISTILL_BOTH)
    if cfg["prune_distill"] and target is None and not resume:
        raise PruneError(DISTILL_NO_TARGET)
    if target is not None and not resume:  # fail before any run folder is created
        epochs = overrides.get("epochs", DEFAULT_CFG_DICT["epochs"])
        schedule = make_schedule(target, epochs, cfg["prune_steps"], cfg["prune_start"], cfg["prune_end"])
        patience = overrides.get("patience", DEFAULT_CFG_DICT["patience"])
        check_patience(patience, schedule.epochs, val=overrides.get("val", DEFAULT_CFG_DICT["val"]))
    yolo = load_model(model)
    if cfg["prune_distill"] and not resume and yolo.task == "classify":
        raise PruneError(DISTILL_TASK.format(task=yolo.task))
    teacher = overrides.get("distill_model") or (yolo.ckpt or {}).get("train_args", {}).get("distill_model")
    if resume and teacher and Path(teacher).parent != Path() and not Path(teacher).is_file():
        # a path that is gone (a bare name is Ultralytics' to find or download, as for any teacher)
        raise PruneError(
            f"distill_model: the teacher this run resumes with, '{teacher}', is not found; accepted: "
            f"distill_model=<path to the teacher> (prune_distill keeps its teacher as weights/teacher.pt)"
        )
    add_pruning(yolo, **plugin)
    yolo.train(**overrides)  # PruneDetectionTrainer resolves built-in data names


def _export(overrides: dict[str, Any]) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from .checkpoint import load_model
    from .export import export

    check_keys(overrides, {**DEFAULT_CFG_DICT, **LEGACY_KEYS}, "export")
    model = overrides.pop("model", None)
    if not model:
        raise PruneError("model is required; accepted: model=<.pt checkpoint>")
    load_model(model)  # one-line errors for a missing or corrupt file, before the exporter runs
    export(model, **overrides)


def _benchmark(overrides: dict[str, Any]) -> None:
    from .benchmark import benchmark
    from .checkpoint import load_model

    check_keys(overrides, BENCHMARK_KEYS, "benchmark")
    args = {**BENCHMARK_KEYS, **overrides}
    for key in ("model", "base"):
        if not args[key]:
            raise PruneError(f"{key} is required; accepted: {key}=<.pt checkpoint>")
        load_model(args[key])
    formats = [f.strip() for f in str(args.pop("formats")).split(",") if f.strip()]
    bad = [f for f in formats if f not in ("onnx", "openvino")]
    if bad:
        raise PruneError(f"formats={','.join(formats)} is invalid; accepted: onnx, openvino (comma-separated)")
    t = args["threads"]
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
        raise PruneError(f"threads={t!r} is invalid; accepted: an integer >= 1")
    if args["data"]:
        from .datasets import resolve_data

        args["data"] = resolve_data(args["data"])
    benchmark(formats=formats, device=str(args.pop("device")), **args)


def _passthrough(mode: str, overrides: dict[str, Any]) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT, entrypoint

    check_keys(overrides, {**DEFAULT_CFG_DICT, **LEGACY_KEYS}, mode)
    if "data" in overrides:
        from .datasets import resolve_data

        task = overrides.get("task")
        if task is None and overrides.get("model"):
            from .checkpoint import load_model

            task = load_model(overrides["model"]).task  # 'shapes' follows the model's task: shapes-seg, ...
        overrides["data"] = resolve_data(overrides["data"], task)
    # entrypoint() reads sys.argv (the same list object Ultralytics captured at import), so rewrite it in place
    sys.argv[:] = ["yolo", mode, *(f"{k}={v}" for k, v in overrides.items())]
    entrypoint()


MODES: dict[str, Callable[[dict[str, Any]], None]] = {
    "prune": _prune,
    "train": _train,
    "export": _export,
    "benchmark": _benchmark,
    "sensitivity": _sensitivity,
}


def entrypoint(argv: list[str] | None = None) -> int:
    """Run ``yolo-prune``; returns the exit status (2 on bad input, with one line on stderr)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv or argv[0] in ("help", "-h", "--help") or (argv[0] == "version" and len(argv) == 1):
            print(HELP if argv[:1] != ["version"] else __version__)  # no torch / Ultralytics import for these
            return 0
        mode, overrides = parse_args(argv)
        if any(overrides.get(k) for k in MODEL_KEYS):
            from .assets import resolve_model

            for key in MODEL_KEYS:  # shipped models by name: model=yolo11n-shapes.pt
                if key in overrides:
                    overrides[key] = resolve_model(overrides[key])
        if mode in (None, "help"):
            print(HELP)
        elif mode == "version":
            print(__version__)
        elif mode in MODES:
            MODES[mode](overrides)
        elif mode in PASSTHROUGH:
            _passthrough(mode, overrides)
        else:
            raise PruneError(f"mode '{mode}' is invalid; accepted: {', '.join([*MODES, *PASSTHROUGH])}")
    except PruneError as e:
        print(f"yolo-prune: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .export import ParityError

        if not isinstance(e, ParityError):
            raise
        print(f"yolo-prune: parity check failed: {e}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(entrypoint())
