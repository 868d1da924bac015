"""The ``yolo-prune`` command: ``yolo-prune MODE key=value ...``, the same syntax as ``yolo``.

Own modes are handled here; ``val``, ``predict``, ``export`` and ``track`` go to Ultralytics' entrypoint unchanged
(pruned checkpoints load there like any other), after built-in dataset names are resolved to their yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .support import check_keys as check_features
from .cfg import (
    KEYS,
    MODE_KEYS,
    MODEL_KEYS,
    ULTRALYTICS_ALIASES,
    PruneConfig,
    PruneError,
    mode_keys,
    optional_int,
    other_mode,
    suggest,
)

PASSTHROUGH = ("val", "predict", "track")
INTERRUPTED = {  # what Ctrl-C leaves, per mode
    "train": "last.pt holds the last finished epoch and prune step (Ultralytics writes it after each epoch); "
    "resume=True continues from it",
    "prune": "nothing was written (pruned.pt and prune_summary.json are each written whole, at the end)",
    "sensitivity": "nothing was written (sensitivity.csv and sensitivity.png are written at the end)",
    "benchmark": "no results were written (exports are moved into the run folder only when all were timed)",
    "export": "the export may be incomplete; run it again",
}


def help_text() -> str:
    """``yolo-prune help``: usage of every mode, then every plugin key with its default, from the config's ``KEYS``."""
    lines = [
        "yolo-prune: channel pruning for Ultralytics YOLO. Usage: yolo-prune MODE key=value ...",
        "",
        "  yolo-prune train model=yolo11n.yaml data=shapes epochs=30 prune=0.5 [train keys below] [any 'yolo train' "
        "key]",
        "      resume=True continues a schedule; model=yolo11n-shapes.pt | yolo26n-shapes.pt | yolo11s-shapes.pt | "
        "yolo26s-shapes.pt: shipped models trained on data=shapes-500 imgsz=128",
        "  yolo-prune prune model=yolo11n.yaml prune=0.5 " + _mode_line("prune"),
        "      one-shot prune; writes <project>/<name>/weights/pruned.pt and prune_summary.json",
        "  yolo-prune sensitivity model=trained.pt data=shapes " + _mode_line("sensitivity"),
        "      prunes each layer alone at each ratio and validates; writes sensitivity.csv and sensitivity.png",
        "  yolo-prune export model=pruned.pt format=onnx|openvino|ncnn|litert|executorch|mnn|engine|... "
        "[any 'yolo export' key the format takes]",
        "      Ultralytics' exporter, then a parity check of the exported model against PyTorch",
        "  yolo-prune benchmark model=pruned.pt base=original.pt " + _mode_line("benchmark"),
        "      base and pruned timed in alternation; latency / GFLOPs / size / mAP table as CSV, JSON and PNG",
        "  yolo-prune val|predict|track model=pruned.pt ...   same keys as 'yolo'; data=shapes is the built-in data",
        "  yolo-prune version | help",
        "",
        "Keys (train: all; prune: all but prune_steps/start/end/distill; prune_ratio: prune only):",
    ]
    for k, key in KEYS.items():
        default = key.default_text or ("" if key.default is None else str(key.default))
        lines.append(f"  {k:<18} default {default or '-':<30} {key.help}; accepted: {key.accepts}")
    lines.append("Every task: model=yolo11n-seg.yaml | -pose | -obb | -cls (YOLOv8 / YOLO11 / YOLO26); data=shapes "
                 "follows the task")  # fmt: skip
    return "\n".join(lines)


def _mode_line(mode: str) -> str:
    skip = {"model", "base"} | ({"data"} if mode == "sensitivity" else set())
    return " ".join(f"[{k}={v}]" for k, v in MODE_KEYS[mode].items() if k not in skip and v is not None)


def parse_args(args: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split ``MODE key=value ...`` into the mode and a dict of typed values (Ultralytics' own parsing)."""
    from ultralytics.cfg import merge_equals_args, parse_key_value_pair

    from ultralytics.cfg import DEFAULT_CFG_DICT

    mode, overrides = None, {}
    for a in merge_equals_args(args):
        flag = isinstance(DEFAULT_CFG_DICT.get(a), bool) or a in ULTRALYTICS_ALIASES
        if mode is not None and "=" not in a and flag:
            overrides[a] = True  # a bare boolean key, as 'yolo val ... half' takes it
        elif "=" in a:
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
            raise PruneError(
                (other_mode(k, accepted) if mode in ("train", "prune") else None)
                or f"'{k}' is not a valid key for 'yolo-prune {mode}'; {suggest(k, accepted)}accepted: "
                f"{', '.join(accepted)}"
            )


def _prune(overrides: dict[str, Any]) -> None:
    from .inputs import check_data
    from .modes.oneshot import prune_file

    check_keys(overrides, {**MODE_KEYS["prune"], **dict.fromkeys(mode_keys("prune"))}, "prune")
    PruneConfig.from_keys({k: v for k, v in overrides.items() if k in KEYS}, "prune")  # first: before model and data
    if overrides.get("model") is None:
        raise PruneError("model is required; accepted: model=<yaml or .pt>, e.g. model=yolo11n.yaml")
    check_data(overrides.get("data"))  # also where the criterion would not read it: a typo is still a typo
    prune_file(**overrides)


def _sensitivity(overrides: dict[str, Any]) -> None:
    from .inputs import check_data
    from .modes.sensitivity import sensitivity_run

    check_keys(overrides, MODE_KEYS["sensitivity"], "sensitivity")
    args = {**MODE_KEYS["sensitivity"], **overrides}
    if not args["model"]:
        raise PruneError("model is required; accepted: model=<.pt checkpoint>")
    if not args["data"]:
        raise PruneError("data is required; accepted: data=<dataset yaml or built-in name, e.g. shapes>")
    check_data(args["data"], "detect")
    sensitivity_run(**args)


def _train(overrides: dict[str, Any]) -> None:
    """``yolo-prune train``: plugin keys to :func:`~yolo_prune.add_pruning`, every other key to ``YOLO.train``."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils.files import get_latest_run

    from .checkpoint import load_model
    from .inputs import check_data, check_resumable, check_teacher
    from .train.model import add_pruning

    plugin = {k: overrides.pop(k) for k in mode_keys("train") if k in overrides}
    check_features({**overrides, **plugin})  # a key this Ultralytics release does not have yet: its own line
    check_keys(overrides, {**DEFAULT_CFG_DICT, **dict.fromkeys(mode_keys("train"))}, "train")
    cfg = PruneConfig.from_keys(plugin, "train")  # first: a bad plugin key costs no model load and no data
    resume = overrides.get("resume")
    cfg.check_run(resume=resume, distill_model=overrides.get("distill_model"))  # the task is checked with the model
    model = overrides.pop("model", None)
    if resume and model is None:  # like 'yolo train resume': the latest run, or resume=path/to/last.pt
        model = resume if isinstance(resume, str) else get_latest_run()
        overrides["resume"] = True
    if resume:
        check_resumable(model)
    if not model:
        raise PruneError("model is required; accepted: model=<yaml or .pt>, e.g. model=yolo11n.yaml")
    yolo = load_model(model)
    if "data" in overrides:
        overrides["data"] = check_data(overrides["data"], yolo.task)
    teacher = overrides.get("distill_model") or (yolo.ckpt or {}).get("train_args", {}).get("distill_model")
    check_features({"distill_model": teacher})  # resuming a distillation run made on a later release
    if resume and teacher and Path(teacher).parent != Path() and not Path(teacher).is_file():
        raise PruneError(
            f"distill_model: the teacher this run resumes with, '{teacher}', is not found; accepted: "
            f"distill_model=<path to the teacher> (prune_distill keeps its teacher as weights/teacher.pt)"
        )
    check_teacher(overrides.get("distill_model"))
    if cfg.prune_sensitivity and not resume:
        from .engine.allocate import check_table

        check_table(cfg.prune_sensitivity, yolo.model)
    add_pruning(yolo, **plugin)  # the config's own checks; the run's are made before its folder exists
    yolo.train(**overrides)  # PruneDetectionTrainer resolves built-in data names


def _export(overrides: dict[str, Any]) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from .checkpoint import load_model
    from .deploy.export import export
    from .inputs import check_data, check_export_format, check_imgsz

    check_features(overrides)
    check_keys(overrides, {**DEFAULT_CFG_DICT, **ULTRALYTICS_ALIASES}, "export")
    model = overrides.pop("model", None)
    if not model:
        raise PruneError("model is required; accepted: model=<.pt checkpoint>")
    yolo = load_model(model)  # one-line errors for a missing or corrupt file, before the exporter runs
    overrides["format"] = check_export_format(overrides.get("format", DEFAULT_CFG_DICT["format"]))
    if "imgsz" in overrides:
        check_imgsz("imgsz", overrides["imgsz"])
    if overrides.get("data"):
        overrides["data"] = check_data(overrides["data"], yolo.task)
    export(model, **overrides)


def _benchmark(overrides: dict[str, Any]) -> None:
    from .deploy.benchmark import benchmark
    from .inputs import check_data, check_imgsz

    check_keys(overrides, MODE_KEYS["benchmark"], "benchmark")
    args = {**MODE_KEYS["benchmark"], **overrides}
    for key in ("model", "base"):
        if not args[key]:
            raise PruneError(f"{key} is required; accepted: {key}=<.pt checkpoint>")
    formats = [f.strip() for f in str(args.pop("formats")).split(",") if f.strip()]  # benchmark() checks them
    optional_int("threads", args["threads"])
    optional_int("runs", args["runs"])
    check_imgsz("imgsz", args["imgsz"])
    if args["data"]:
        from .checkpoint import load_model

        args["data"] = check_data(args["data"], load_model(args["model"]).task)  # shapes follows the task
    benchmark(formats=formats, **args)


def _passthrough(mode: str, overrides: dict[str, Any]) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT, entrypoint

    from .datasets import is_builtin
    from .inputs import check_data, check_source

    check_features(overrides)
    check_keys(overrides, {**DEFAULT_CFG_DICT, **ULTRALYTICS_ALIASES}, mode)

    task, model = overrides.get("task"), str(overrides.get("model") or "")
    if task is None and is_builtin(overrides.get("data")) and Path(model).suffix in (".pt", ".yaml", ".yml"):
        from .checkpoint import load_model

        task = load_model(model).task  # 'shapes' follows the model's task: shapes-seg, ...; exports are Ultralytics'
    if "data" in overrides:
        overrides["data"] = check_data(overrides["data"], task)
    if mode in ("predict", "track") and "source" in overrides:
        check_source(overrides["source"])
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
            print(help_text() if argv[:1] != ["version"] else __version__)  # no torch / Ultralytics import for these
            return 0
        mode, overrides = parse_args(argv)
        if any(overrides.get(k) for k in MODEL_KEYS):
            from .assets import resolve_model

            for key in MODEL_KEYS:  # shipped models by name: model=yolo11n-shapes.pt
                if key in overrides:
                    overrides[key] = resolve_model(overrides[key])
        if mode in (None, "help"):
            print(help_text())
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
    except KeyboardInterrupt:
        print(f"yolo-prune: interrupted: {INTERRUPTED.get(argv[0] if argv else '', 'stopped by Ctrl-C')}",
              file=sys.stderr)  # fmt: skip
        return 130
    except Exception as e:
        from .deploy.export import ParityError

        if not isinstance(e, ParityError):
            raise
        print(f"yolo-prune: parity check failed: {e}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(entrypoint())
