"""Checks of the run's own (Ultralytics) inputs, made where a run enters and before anything is written.

Ultralytics checks these itself, but late (after a run folder exists), with tracebacks, or by installing or downloading
what is missing. Each check here gives one :class:`~yolo_prune.cfg.PruneError` line naming the key and what is
accepted; where Ultralytics' own check is the authority (dataset files), it is run and its message becomes that line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .cfg import PruneError

# export format -> (modules it needs, what to pip install): Ultralytics would install them at run time
EDGE = "'yolo-prune[edge]'"
# what each export format needs installed to be exported and run here, and the pip install that gives it: checked
# before anything is exported, since Ultralytics' exporter and backends would pip install a missing one at run time
EXPORT_NEEDS = {
    "onnx": (("onnx", "onnxruntime"), "onnx onnxruntime"),
    "openvino": (("openvino",), "'yolo-prune[openvino]'"),
    "engine": (("tensorrt",), "tensorrt, on a machine with an NVIDIA GPU"),
    "coreml": (("coremltools",), "coremltools"),
    "saved_model": (("tensorflow",), "tensorflow"),
    "pb": (("tensorflow",), "tensorflow"),
    "edgetpu": (("tensorflow",), "tensorflow and the Edge TPU compiler"),
    "litert": (("litert_torch", "ai_edge_litert"), EDGE),
    "litert-int8": (("ai_edge_quantizer",), EDGE),  # LiteRT's INT8 quantization (quantize=8, w8a16, w8a32)
    "paddle": (("paddle",), "paddlepaddle"),
    "mnn": (("MNN",), EDGE),
    "ncnn": (("ncnn", "pnnx"), EDGE),
    "executorch": (("executorch",), EDGE),
    "rknn": (("rknn",), "rknn-toolkit2"),
}


def installed(module: str) -> bool:
    """Whether ``module`` imports here (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_installed(fmt: str, key: str = "format", value: str | None = None) -> None:
    """Raise one line naming ``key=value`` (default ``format=fmt``), the missing modules and the install, when what
    export format ``fmt`` needs (:data:`EXPORT_NEEDS`) is not installed here.

    Raises:
        PruneError: A module is missing.
    """
    modules, pip = EXPORT_NEEDS.get(fmt, ((), ""))
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise PruneError(
            f"{key}={value or fmt} needs {', '.join(missing)}, {'which is' if len(missing) == 1 else 'which are'} not "
            f"installed (yolo-prune installs nothing at run time); accepted: pip install {pip}, or another "
            f"{'runtime' if key == 'prune_runtime' else 'format'}"
        )


def first_line(e: BaseException) -> str:
    """An exception's message as one line (Ultralytics' messages span several, with emojis and hints)."""
    text = " ".join(str(e).split("\n")[0].split()) or type(e).__name__
    return text.encode("ascii", "ignore").decode().strip()


def check_imgsz(key: str, v: Any) -> None:
    """``imgsz``: an integer, or a list of two (as Ultralytics takes it)."""
    items = v if isinstance(v, (list, tuple)) else [v]
    if not 1 <= len(items) <= 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in items):
        raise PruneError(f"{key}={v!r} is invalid; accepted: a positive integer (e.g. 640) or [height, width]")


# the aliases Ultralytics' exporter maps (ultralytics/engine/exporter.py), where this release has the format they name
FORMAT_ALIASES = {"tensorrt": "engine", "trt": "engine", "mlpackage": "coreml", "mlprogram": "coreml",
                  "apple": "coreml", "ios": "coreml", "tflite": "litert", "tfjs": "litert"}  # fmt: skip


def canonical_format(fmt: Any) -> str:
    """``fmt`` in the exporter's own spelling: lower case, aliases mapped (``tflite`` -> ``litert``, ``trt`` ->
    ``engine``, ...) where this Ultralytics release has the format they name."""
    from ultralytics.engine.exporter import export_formats

    name = str(fmt).strip().lower()
    accepted = export_formats()["Argument"]
    return FORMAT_ALIASES[name] if name not in accepted and FORMAT_ALIASES.get(name) in accepted else name


def check_export_format(fmt: Any) -> str:
    """The export ``format`` (Ultralytics' spelling), valid and with its runtime's packages installed."""
    from ultralytics.engine.exporter import export_formats

    name = canonical_format(fmt)
    accepted = [a for a in export_formats()["Argument"] if a != "-"]
    if name not in accepted:
        raise PruneError(f"format={fmt!r} is invalid; accepted: {', '.join(accepted)}")
    check_installed(name)
    return name


def export_arguments(fmt: str) -> list[str] | None:
    """The export keys Ultralytics' exporter takes for ``fmt`` (its export_formats table); None for an unlisted one."""
    from ultralytics.engine.exporter import export_formats

    table = export_formats()
    return dict(zip(table["Argument"], table["Arguments"])).get(fmt)


def check_export_args(fmt: str, kwargs: dict[str, Any]) -> None:
    """Raise one line for an export key ``fmt`` does not take, by Ultralytics' own rule (``validate_args`` on the
    exporter's per-format Arguments), before anything is exported; ``data`` is left out: yolo-prune reads its parity
    image from it whatever the format.

    Raises:
        PruneError: A key the format does not take, or a value Ultralytics' config refuses.
    """
    from ultralytics.cfg import get_cfg
    from ultralytics.engine.exporter import validate_args
    from ultralytics.utils import DEFAULT_CFG

    valid = export_arguments(fmt)
    if valid is None:  # a format this release does not list: check_export_format refuses it
        return
    given = {k: v for k, v in kwargs.items() if k != "data"}
    try:
        validate_args(fmt, get_cfg(DEFAULT_CFG, {"batch": 1, "device": None, **given, "format": fmt}), valid)
    except AssertionError as e:  # a key the format does not take (or a precision: Ultralytics' line names them)
        line = first_line(e).removeprefix("ERROR ").strip()
        keys = ", ".join(k for k in valid if k != "data") or "imgsz only"
        raise PruneError(line if line.startswith("quantize=") else f"{line}; accepted for format={fmt}: {keys}") from None
    except (TypeError, ValueError, SyntaxError) as e:  # a value of the wrong type, or a key no mode knows
        raise PruneError(first_line(e)) from None


def _ultralytics_resolves(name: str) -> bool:
    """Whether Ultralytics finds or downloads ``name`` itself: a URL, a yaml it ships (coco8.yaml), or a bare dataset
    name (a classification set such as mnist160, or a folder of its datasets directory)."""
    from ultralytics.utils.checks import check_file

    if "://" in name:
        return True
    if Path(name).name != name:  # an explicit path is the user's, and it does not exist
        return False
    return not Path(name).suffix or bool(check_file(name, download=False, hard=False))


def check_data(data: Any, task: str | None = None) -> Any:
    """``data=``: a built-in name (returned as its generated yaml or folder), a local dataset yaml or classification
    folder that Ultralytics' own dataset check accepts, or a name Ultralytics resolves or downloads itself.

    Raises:
        PruneError: A file or folder that does not exist, or one Ultralytics' check refuses (its message, one line).
    """
    from .datasets import is_builtin, resolve_data

    if data is None or data == "":
        return data
    if is_builtin(data):
        return resolve_data(data, task)
    path = Path(str(data))
    if not path.exists():
        if _ultralytics_resolves(str(data)):
            return data
        raise PruneError(
            f"data={str(data)!r} is not found; accepted: a dataset yaml, a classification folder, or a built-in "
            f"dataset (shapes, shapes-500, shapes-seg, ...)"
        )
    from ultralytics.data.utils import check_cls_dataset, check_det_dataset

    try:
        if path.is_dir() or task == "classify":
            check_cls_dataset(str(path))
        else:
            check_det_dataset(str(path), autodownload=False)
    except Exception as e:  # noqa: BLE001  Ultralytics raises many types for a bad dataset; its message is the line
        if path.suffix in (".yaml", ".yml") and "download" in (_yaml(path) or {}):
            return data  # images missing but a download is declared: Ultralytics fetches them, as 'yolo' would
        raise PruneError(f"data={str(data)!r}: {first_line(e)}") from None
    return data


def _yaml(path: Path) -> dict | None:
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return d if isinstance(d, dict) else None


def check_source(source: Any) -> None:
    """``source=`` of predict / track: a local path must exist (URLs, streams, webcams and globs are Ultralytics')."""
    if not isinstance(source, (str, Path)):
        return
    s = str(source)
    if "://" in s or s.isdigit() or s == "screen" or any(c in s for c in "*?[") or s.endswith(".streams"):
        return
    if not Path(s).exists():
        raise PruneError(f"source={s!r} is not found; accepted: an image, video or folder path, a URL, or a webcam 0")


def check_device(device: Any) -> str:
    """``device=`` of yolo-prune's own modes: cpu, or a CUDA device that exists here."""
    import torch

    d = str(device).lower().replace("cuda:", "")
    if d == "cpu":
        return "cpu"
    ids = [x for x in d.split(",") if x.strip()]
    if not ids or not all(x.strip().isdigit() for x in ids):
        raise PruneError(f"device={device!r} is invalid; accepted: cpu, or a CUDA device index such as 0")
    count = torch.cuda.device_count()
    if max(int(x) for x in ids) >= count:
        found = f"{count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA GPU"
        raise PruneError(f"device={device} is not available here ({found}); accepted: device=cpu")
    return d


def check_teacher(teacher: Any) -> None:
    """``distill_model=``: an existing checkpoint, a shipped model, or a name Ultralytics downloads (yolo11n.pt)."""
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    from .assets import MODELS

    if not teacher or Path(str(teacher)).is_file() or str(teacher) in MODELS or str(teacher) in GITHUB_ASSETS_NAMES:
        return
    raise PruneError(
        f"distill_model={str(teacher)!r} is not found; accepted: a teacher .pt checkpoint, or an Ultralytics model "
        f"name such as yolo11s.pt"
    )


def check_resumable(last: Any) -> None:
    """A ``resume=True`` checkpoint must be an unfinished run's ``last.pt``, as Ultralytics itself requires."""
    import torch

    if not last or Path(str(last)).suffix != ".pt" or not Path(str(last)).is_file():
        found = "no last.pt found below the current folder" if not last else f"{str(last)!r} is not a .pt file"
        raise PruneError(f"resume: nothing to resume ({found}); accepted: resume=True model=path/to/last.pt")
    try:
        ckpt = torch.load(str(last), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  torch/pickle raise many types for a corrupt file
        raise PruneError(f"resume: {last} is not a readable checkpoint ({type(e).__name__})") from None
    epochs = (ckpt.get("train_args") or {}).get("epochs") if isinstance(ckpt, dict) else None
    if not isinstance(ckpt, dict) or ckpt.get("epoch", -1) < 0 or ckpt.get("optimizer") is None:
        raise PruneError(
            f"resume: {last} is a finished run (training to {epochs} epochs is complete), nothing to resume; "
            f"accepted: train it anew with model={last} (no resume)"
        )
