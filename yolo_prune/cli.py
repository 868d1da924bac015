"""The ``yolo-prune`` command: ``yolo-prune MODE key=value ...``, the same syntax as ``yolo``.

Own modes are handled here; ``val``, ``predict``, ``export`` and ``track`` go to Ultralytics' entrypoint unchanged
(pruned checkpoints load there like any other), after built-in dataset names are resolved to their yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .cfg import (
    MODE_KEYS,
    MODEL_KEYS,
    ULTRALYTICS_ALIASES,
    PruneError,
    help_text,
    mode_keys,
    optional_int,
    suggest,
)

PASSTHROUGH = ("val", "predict", "track")


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
            raise PruneError(
                f"'{k}' is not a valid key for 'yolo-prune {mode}'; {suggest(k, accepted)}accepted: "
                f"{', '.join(accepted)}"
            )


def _prune(overrides: dict[str, Any]) -> None:
    from .inputs import check_data
    from .modes.oneshot import prune_file

    check_keys(overrides, {**MODE_KEYS["prune"], **dict.fromkeys(mode_keys("prune"))}, "prune")
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
    check_keys(overrides, {**DEFAULT_CFG_DICT, **dict.fromkeys(mode_keys("train"))}, "train")
    resume = overrides.get("resume")
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
    if resume and teacher and Path(teacher).parent != Path() and not Path(teacher).is_file():
        raise PruneError(
            f"distill_model: the teacher this run resumes with, '{teacher}', is not found; accepted: "
            f"distill_model=<path to the teacher> (prune_distill keeps its teacher as weights/teacher.pt)"
        )
    check_teacher(overrides.get("distill_model"))
    add_pruning(yolo, **plugin)  # the config's own checks; the run's are made before its folder exists
    yolo.train(**overrides)  # PruneDetectionTrainer resolves built-in data names


def _export(overrides: dict[str, Any]) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from .checkpoint import load_model
    from .deploy.export import export
    from .inputs import check_data, check_export_format, check_imgsz

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
    from .deploy.benchmark import FORMATS, benchmark
    from .inputs import check_data, check_imgsz

    check_keys(overrides, MODE_KEYS["benchmark"], "benchmark")
    args = {**MODE_KEYS["benchmark"], **overrides}
    for key in ("model", "base"):
        if not args[key]:
            raise PruneError(f"{key} is required; accepted: {key}=<.pt checkpoint>")
    formats = [f.strip() for f in str(args.pop("formats")).split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise PruneError(f"formats={','.join(formats)} is invalid; accepted: {', '.join(FORMATS)} (comma-separated)")
    optional_int("threads", args["threads"])
    optional_int("runs", args["runs"])
    check_imgsz("imgsz", args["imgsz"])
    args["data"] = check_data(args["data"]) if args["data"] else None
    benchmark(formats=formats, **args)


def _passthrough(mode: str, overrides: dict[str, Any]) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT, entrypoint

    from .inputs import check_data, check_source

    check_keys(overrides, {**DEFAULT_CFG_DICT, **ULTRALYTICS_ALIASES}, mode)
    task = overrides.get("task")
    if overrides.get("model"):
        from .checkpoint import load_model

        task = task or load_model(overrides["model"]).task  # 'shapes' follows the model's task: shapes-seg, ...
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
        print(
            "yolo-prune: interrupted: files are written whole or not at all (a run's last.pt is its last finished "
            "epoch or step; resume=True continues it), nothing half-written was left",
            file=sys.stderr,
        )
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
