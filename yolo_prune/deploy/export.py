"""Export through Ultralytics' exporter, then prove the exported model computes what PyTorch does.

After every export the exported file is run with its own runtime (:mod:`yolo_prune.engine.backends`: ONNX Runtime,
OpenVINO, NCNN, LiteRT, ExecuTorch, MNN) on the same image as the PyTorch model, configured the way the exporter configured it (head in export mode, the YOLO26
one-to-one head when ``nms=False``). The image is real: the first val image of ``data`` or one from the built-in
generator (uniform noise is out of distribution and exaggerates INT8 error). Differences are taken with box
coordinates divided by ``imgsz``, so boxes and scores share one scale; over the tolerance, the export fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ultralytics.utils import LOGGER

from ..cfg import PruneError
from ..checkpoint import load_model
from ..datasets import make_image, resolve_data
from ..engine.backends import FORMATS, check_backend, load_session, no_runtime_installs, precision_found
from ..inputs import canonical_format, check_export_args, check_installed, export_arguments, first_line
from ..support import FEATURES, has, require, version

# Parity criterion by precision (``quantize``): (statistic, bound). fp32 and fp16 bound the worst output element
# (fp16's worst measured 0.0025 on test models). Static INT8 moves single anchors by up to ~0.6 even when the export is
# right, so it is bounded on the mean: correct INT8 exports of pruned yolo11n/yolo26n measured 0.002-0.077 (OpenVINO's
# calibration varies run to run), a graph with one sign-flipped conv 0.16.
TOLERANCE: dict[int, tuple[str, float]] = {32: ("max", 1e-3), 16: ("max", 1e-2), 8: ("mean", 0.1)}
CALIBRATION_DATA = "shapes-256"  # built-in data for INT8 calibration when no data= is given


class ParityError(RuntimeError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance, or its precision is not the one
    asked for."""


def canonical_quantize(kwargs: dict[str, Any]) -> int | str:
    """The precision an export asks for, in Ultralytics' own spellings: ``quantize=`` 8/16/32, ``'int8'``, ``'fp16'``,
    ``'w8a8'``... (``QUANTIZE_ALIASES``) or the deprecated ``half=True`` / ``int8=True``; 32 when unset.

    Ultralytics before 8.4.80 has no ``quantize`` (:mod:`yolo_prune.support`): there ``half`` / ``int8`` are its keys.
    """
    on = lambda v: v is not None and str(v).strip().lower() not in {"none", "false", "0"}  # noqa: E731  (as Ultralytics)
    q = (
        kwargs["quantize"]
        if "quantize" in kwargs
        else 8
        if on(kwargs.get("int8"))
        else 16
        if on(kwargs.get("half"))
        else None
    )
    if q is None:
        return 32
    if "quantize" not in kwargs and not has("quantize"):
        return q  # half=True / int8=True, this release's own keys
    require("quantize", f"quantize={q}")
    from ultralytics.cfg import QUANTIZE_ALIASES, QUANTIZE_VALID_VALUES

    scheme = QUANTIZE_ALIASES.get(str(q).lower())
    if scheme is None:
        raise PruneError(f"quantize={q!r} is invalid; accepted: {QUANTIZE_VALID_VALUES}")
    return scheme


def input_shape(exported: str | Path, fmt: str) -> list[int | None]:
    """(batch, channels, height, width) of the exported model's image input, as its runtime loads it; None where
    dynamic."""
    return load_session(exported, fmt).shape


def input_hw(exported: str | Path, fmt: str) -> tuple[int, int] | None:
    """(height, width) of the exported model's image input; None where either is dynamic."""
    hw = input_shape(exported, fmt)[-2:]
    return (hw[0], hw[1]) if len(hw) == 2 and None not in hw else None


NO_TOPK = {"rknn", "ncnn", "executorch", "paddle", "imx", "edgetpu", "qnn"}  # Exporter: no end2end branch here


def keeps_end2end(fmt: str, nms: bool | None, quantize: int | str = 32) -> bool:
    """Whether Ultralytics' exporter keeps YOLO26's NMS-free one-to-one head: only with ``nms=False``, and not for
    formats without top-k, nor for LiteRT with static INT8 (ultralytics/engine/exporter.py)."""
    return nms is False and fmt not in NO_TOPK and not (fmt == "litert" and quantize in {8, "w8a16"})


def _reference_model(weights: str | Path, e2e: bool):
    model = load_model(weights).model.float().eval()
    if hasattr(model, "end2end"):
        model.end2end = e2e  # as Exporter configures it (see keeps_end2end)
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True  # heads return the single tensor that exported graphs return
    return model


def _reference_outputs(model, x: torch.Tensor) -> list[np.ndarray]:
    head = model.model[-1]
    if hasattr(head, "max_det"):  # the exporter clamps top-k to the anchors available at this size
        h, w = x.shape[-2:]
        head.max_det = min(head.max_det, sum(int(h / s) * int(w / s) for s in model.stride.tolist()))
    with torch.no_grad():
        y = model(x)
    ys = list(y) if isinstance(y, (tuple, list)) else [y]
    return [t.numpy() for t in ys if isinstance(t, torch.Tensor)]


def _normalised(y: np.ndarray, imgsz: int, end2end: bool, ref: np.ndarray | None = None) -> np.ndarray:
    """Box coordinates divided by ``imgsz``, so they share one scale with scores.

    Raw (not NMS-free) boxes are divided by ``max(imgsz, |reference box|)`` elementwise: a box far outside the image
    (common in untrained heads) carries fp16's relative rounding, which /imgsz alone would turn into a failure.
    """
    y = y.copy()
    if y.ndim != 3:  # class probabilities: already on a unit scale
        return y
    if end2end:  # NMS-free (B, max_det, 6 + extras): x1 y1 x2 y2 score class ...
        y[..., :4] /= imgsz
    else:  # (B, 4 + nc + extras, anchors): boxes first
        y[:, :4] /= np.maximum(imgsz, np.abs((y if ref is None else ref)[:, :4]))
    return y


def _diffs(ref: np.ndarray, out: np.ndarray, end2end: bool) -> dict[str, float]:
    """Max and mean abs difference; NMS-free rows are matched as sets (near-tied scores may swap top-k places)."""
    if not end2end:
        d = np.abs(ref - out)
        return {"max": float(d.max()), "mean": float(d.mean())}
    worst, means = 0.0, []
    for r, o in zip(ref, out):  # per image: each row against its closest counterpart, both ways
        pair = np.abs(r[:, None, :] - o[None, :, :]).max(-1)
        worst = max(worst, float(pair.min(1).max()), float(pair.min(0).max()))
        means.append(float(np.abs(r[:, None, :] - o[None, :, :])[np.arange(len(r)), pair.argmin(1)].mean()))
    return {"max": worst, "mean": float(np.mean(means))}


def parity_image(imgsz: int | tuple[int, int], data: str | None = None) -> torch.Tensor:
    """One real image as a (1, 3, h, w) RGB tensor in [0, 1]: data's first val image, else a generated one."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    img = None
    if data and not Path(str(data)).is_dir():  # a classification folder has no 'val' key: use a generated image
        from ultralytics.data.utils import check_det_dataset

        val = Path(check_det_dataset(data)["val"])
        files = sorted(p for p in (val.rglob("*") if val.is_dir() else []) if p.suffix.lower() in {".jpg", ".png"})
        img = cv2.imread(str(files[0])) if files else None
    if img is None:
        img = make_image(seed=1, index=0, size=max(h, w))[0]
    img = cv2.resize(img, (w, h))[:, :, ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW
    return torch.from_numpy(np.ascontiguousarray(img)).float()[None] / 255


def parity(
    weights: str | Path,
    exported: str | Path,
    fmt: str,
    imgsz: int | tuple[int, int] | None = None,
    nms: bool | None = None,
    data: str | None = None,
    quantize: int | str = 32,
) -> dict[str, float]:
    """Max and mean abs difference between the checkpoint and its export on one real image, over every output.

    The image has the exported graph's own input size (``imgsz`` only where the graph's is dynamic). Pixel
    coordinates are divided by the larger side. NMS-free detections are matched as sets; mask prototypes, which depend
    on no ordering, are compared directly.
    """
    session = load_session(exported, fmt, exact=True)
    shape = session.shape
    hw = (shape[2], shape[3]) if len(shape) == 4 and None not in shape[2:] else None
    hw = hw or ((imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz or (640, 640)))
    imgsz = max(hw)
    x = parity_image(hw, data)
    batch = shape[0]
    if batch and batch > 1:  # a static batch: the same image in every slot
        x = x.repeat(batch, 1, 1, 1)
    e2e = keeps_end2end(fmt, nms, quantize)
    model = _reference_model(weights, e2e)
    refs = _reference_outputs(model, x)
    one2one = e2e and hasattr(model.model[-1], "one2one_cv2")  # YOLO26 NMS-free: (B, max_det, 6 + extras)
    outs = session.run(x)
    if len(outs) < len(refs):
        raise ParityError(f"{fmt} export has {len(outs)} outputs, PyTorch {len(refs)}")
    worst, means = 0.0, []
    for i, ref in enumerate(refs):
        out = next((o for o in outs if o.shape == ref.shape), None) if len(outs) > 1 else outs[0]
        if out is None or out.shape != ref.shape:
            got = [o.shape for o in outs]
            raise ParityError(f"output shapes differ: PyTorch {ref.shape} vs {fmt} {got}")
        end2end = i == 0 and ref.ndim == 3 and one2one
        if i == 0:
            ref, out = _normalised(ref, imgsz, end2end), _normalised(out, imgsz, end2end, ref)
        d = _diffs(ref, out, end2end)
        worst, means = max(worst, d["max"]), [*means, d["mean"]]
    return {"max": worst, "mean": float(np.mean(means))}


def onnx_parity(weights: str | Path, onnx_file: str | Path, imgsz: int = 640) -> float:
    """Max abs difference of an fp32 ONNX export (see :func:`parity`)."""
    return parity(weights, onnx_file, "onnx", imgsz)["max"]


def _check_format(fmt: str, quantize: int | str, kwargs: dict[str, Any]):
    """The runtime of ``fmt`` (None for a format checked nowhere here), installed, exporting ``quantize`` and taking
    the other export keys of ``kwargs``.

    Raises:
        PruneError: The runtime is not installed, the format does not export that precision, or it does not take a key.
    """
    # below the release the edge runtimes are tested on, an edge format still exports, unchecked (as engine does)
    backend = check_backend(fmt) if fmt in FORMATS and (fmt in ("onnx", "openvino") or has("edge runtimes")) else None
    if fmt in FORMATS and backend is None:
        check_installed(fmt)
    if fmt == "litert" and quantize in {8, "w8a16", "w8a32"}:
        check_installed("litert-int8", "quantize", str(quantize))
    if backend and quantize != 32 and quantize in TOLERANCE and quantize not in backend.quantize:
        raise PruneError(
            f"quantize={quantize} is not a precision format={fmt} exports; accepted: "
            f"{', '.join(map(str, (32, *backend.quantize)))}"
        )
    check_export_args(fmt, kwargs if has("quantize") else {k: v for k, v in kwargs.items() if k != "quantize"})
    return backend


def _exported_nms(fmt: str, kwargs: dict[str, Any]) -> bool | None:
    """``nms`` as the exporter applies it: the deprecated ``end2end`` mapped as Ultralytics' get_cfg maps it, and None
    for a format without embedded NMS (it exports native outputs)."""
    nms = kwargs.get("nms")
    if kwargs.get("end2end") is not None:
        nms = False if kwargs["end2end"] else True if nms is True else None
    return None if nms and "nms" not in (export_arguments(fmt) or []) else nms


def _takes_data(fmt: str) -> bool:
    """Whether Ultralytics' exporter takes ``data=`` for ``fmt`` (calibration of static INT8); releases before 8.4.50
    list it for no format and take it for all."""
    from ultralytics.engine.exporter import export_formats

    listed = any("data" in args for args in export_formats()["Arguments"])
    return "data" in (export_arguments(fmt) or []) or not listed


def _no_parity(backend, format: str, quantize: int | str, nms: bool | None) -> str | None:
    """Why parity cannot be checked for this export, or None."""
    if backend is None and format in FORMATS:
        return f"its runtime is checked from ultralytics>={FEATURES['edge runtimes']} (installed: {version('ultralytics')})"
    if backend is None:
        return f"format={format} has no runtime here to run it (checked: {', '.join(FORMATS)})"
    if nms:
        return "nms=True adds NMS to the graph, whose kept boxes PyTorch's raw head does not give"
    if quantize not in TOLERANCE:
        return f"quantize={quantize!r} has no parity criterion (checked: 32, 16, 8)"
    return None


def _run_exporter(yolo, weights: str | Path, format: str, kwargs: dict[str, Any]) -> str:
    """Ultralytics' exporter with nothing installed at run time. Its own checks (a platform, a key combination, a
    converter's result) raise AssertionError / ValueError: those become one line, and what the failed export had
    written beside the checkpoint is removed."""
    # data= gives parity its image on every format; the exporter takes it only where it calibrates
    given = kwargs if _takes_data(format) else {k: v for k, v in kwargs.items() if k != "data"}
    src = Path(getattr(yolo, "ckpt_path", None) or weights)
    # where Ultralytics writes: beside the file as given (links not followed), the cwd for a yaml
    folder = Path.cwd() if src.suffix in {".yaml", ".yml"} else src.absolute().parent
    before = set(folder.iterdir())
    try:
        with no_runtime_installs():
            return yolo.export(format=format, **given)
    except (AssertionError, ValueError) as e:
        left = _remove_new_outputs(folder, src.stem, before)
        removed = f" (removed what it had written: {', '.join(left)})" if left else ""
        raise PruneError(f"format={format}: Ultralytics' exporter stopped: {first_line(e)}{removed}") from e


def _remove_new_outputs(folder: Path, stem: str, before: set[Path]) -> list[str]:
    """Remove what an export of ``stem`` left in ``folder`` since ``before``: only entries named after the checkpoint
    (every Ultralytics output is ``<stem>.<suffix>`` or ``<stem>_<format>_model``), so nothing another process made
    there meanwhile goes; returns their names."""
    import shutil

    left = sorted(p for p in set(folder.iterdir()) - before if p.name.startswith(f"{stem}.") or
                  p.name.startswith(f"{stem}_"))  # fmt: skip
    for p in left:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return [p.name for p in left]


def export(weights: str | Path, format: str = "onnx", **kwargs: Any) -> dict[str, Any]:
    """Export ``weights`` with Ultralytics' exporter and check parity on the format's own runtime.

    Args:
        weights: A checkpoint (pruned or not; a distillation checkpoint exports its student).
        format: An Ultralytics export format or alias (``onnx``, ``openvino``, ``ncnn``, ``tflite``...).
        **kwargs: Ultralytics export keys (``imgsz``, ``dynamic``, ``simplify``, ``nms``, ``quantize``, ``data``...).
            Without ``imgsz`` the checkpoint's training imgsz is used, as Ultralytics does. ``data`` gives parity its
            image on every format, and INT8 calibration its images (the built-in dataset by default).

    Returns:
        ``file``, ``format``, ``quantize``, ``max_abs_diff`` / ``mean_abs_diff`` and the ``criterion`` applied; or
        ``skipped``, the reason parity cannot run (no runtime here, ``nms=True``), also logged as a warning.

    Raises:
        PruneError: A key, precision or runtime the format does not have here, before anything is written.
        ParityError: Outputs over the tolerance, or an fp16 / INT8 export that does not hold that precision.
    """
    quantize = canonical_quantize(kwargs)
    format = canonical_format(format)  # the exporter's own spelling rule and aliases
    backend = _check_format(format, quantize, kwargs)  # before anything is written
    yolo = load_model(weights)  # a distillation checkpoint exports its student
    if getattr(yolo.model.model[-1], "one2one_cv2", None) is not None:  # parity follows today's YOLO26 export rule
        require("yolo26 export", "exporting a YOLO26 model")
    task = yolo.task
    if not has("quantize"):
        kwargs.pop("quantize", None)  # None here (a set one was refused above): this release does not know the key
    if quantize == 8 and _takes_data(format):  # calibration (MNN's int8 is weight-only: no data)
        kwargs["data"] = resolve_data(kwargs.get("data") or CALIBRATION_DATA, task)
    elif kwargs.get("data"):
        kwargs["data"] = resolve_data(kwargs["data"], task)
    file = _run_exporter(yolo, weights, format, kwargs)
    result = {"file": str(file), "format": format, "quantize": quantize, "max_abs_diff": None, "criterion": None}
    nms = _exported_nms(format, kwargs)
    if skip := _no_parity(backend, format, quantize, nms):
        LOGGER.warning(f"yolo-prune: parity NOT checked for {file}: {skip}")
        result["skipped"] = skip
        return result
    found = precision_found(file, format)
    if quantize in (8, 16) and quantize not in found:
        raise ParityError(
            f"{format} export {file} was asked for quantize={quantize} but its graph holds no "
            f"{'INT8 (quantize/dequantize)' if quantize == 8 else 'fp16'} weights or ops"
        )
    args = yolo.model.args if isinstance(yolo.model.args, dict) else {}
    imgsz = kwargs.get("imgsz") or args.get("imgsz")  # for dynamic graphs: what Model.export exported at
    diff = parity(weights, file, format, imgsz, nms, kwargs.get("data"), quantize)
    stat, tol = TOLERANCE[quantize]
    result.update(max_abs_diff=diff["max"], mean_abs_diff=diff["mean"], criterion=f"{stat} <= {tol:g}")
    ok = diff[stat] <= tol
    LOGGER.info(
        f"yolo-prune: {format} parity vs PyTorch: max abs diff {diff['max']:.3g}, mean {diff['mean']:.3g} "
        f"({stat} <= {tol:g} for quantize={quantize}) {'ok' if ok else 'FAILED'}"
    )
    if not ok:
        raise ParityError(
            f"{format} export of {weights} differs from PyTorch: {stat} abs diff {diff[stat]:.3g} > {tol:g} "
            f"(quantize={quantize}); the exported file is {file}"
        )
    return result
