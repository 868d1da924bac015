"""What the installed Ultralytics release can do: features newer releases brought, and the one line for a missing one.

yolo-prune works with every Ultralytics release in ``SUPPORTED_ULTRALYTICS`` (``benchmarks/compat.py`` runs the suite
against the range). Some features need a later release than the oldest; asking for one on an earlier release stops the
run before anything is written, with one line naming the feature and the first release that has it. The version is read
from the installed package's metadata, so ``yolo-prune help`` still imports nothing heavy.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _metadata_version

from .cfg import SUPPORTED_ULTRALYTICS, PruneError

# feature -> first Ultralytics release that has it in the form yolo-prune uses (benchmarks/results/compat.md)
FEATURES = {
    # DistillationModel arrived in 8.4.77, but yolo-prune's distillation tests pass from 8.4.164 (8.4.77: 8 of 18 fail,
    # no dis_loss column before 8.4.104; 8.4.104: 2 fail; 8.4.164 and 8.4.190: all pass; the boundary between 8.4.105
    # and 8.4.164 is not bisected)
    "distillation": "8.4.164",
    "quantize": "8.4.80",  # export's quantize= (earlier releases take half= / int8=)
    "yolo26 trace": "8.4.113",  # Detect detaches the one-to-one inputs in training only (before: in eval too)
    "yolo26 export": "8.4.142",  # YOLO26 exported NMS-free only with nms=False, and Detect.fuse keeping that branch
    "stopper resume": "8.4.172",  # a resumed run restores the early stopper's counter (before: it starts afresh)
    # NCNN / LiteRT / ExecuTorch / MNN through ultralytics.nn.backends (absent in 8.4.8) and the litert-torch exporter
    # (after 8.4.77): tested on 8.4.190 only so far, the earlier boundary not measured
    "edge runtimes": "8.4.190",
}
# why a missing feature matters, and what to do instead on the installed release
WHY = {
    "distillation": ("yolo-prune's distillation is tested from {first}", "leave it out"),
    "quantize": ("export's quantize= arrived in {first}", "half=True or int8=True on this release"),
    "yolo26 export": ("yolo-prune's parity check and latency timing follow the YOLO26 export rule of {first}",
                      "plain 'yolo export' (no parity check), or prune by GFLOPs (prune=)"),
    "edge runtimes": ("yolo-prune's NCNN, LiteRT, ExecuTorch and MNN support is tested from {first}",
                      "format=onnx|openvino, prune_runtime=onnxruntime|openvino"),
}  # fmt: skip
SUPPORTED = SUPPORTED_ULTRALYTICS.removeprefix("ultralytics")
UPPER = ",".join(p for p in SUPPORTED.split(",") if p.startswith("<"))


def version(name: str = "ultralytics") -> str:
    """The installed release of ``name`` (metadata; the module's ``__version__`` where a fork ships another name)."""
    try:
        return _metadata_version(name)
    except PackageNotFoundError:
        import ultralytics

        return ultralytics.__version__
# Ultralytics keys a feature brought: asking for them on an earlier release gives the feature's line
FEATURE_KEYS = {"distill_model": "distillation", "dis": "distillation", "prune_distill": "distillation",
                "quantize": "quantize"}  # fmt: skip


@lru_cache(maxsize=1)
def installed() -> tuple[int, ...]:
    """The installed Ultralytics release as a tuple (8, 4, 190)."""
    return release(version("ultralytics"))


def release(v: str) -> tuple[int, ...]:
    """``"8.4.190"`` -> ``(8, 4, 190)``: the leading digits of each part (``8.4.8rc1`` is 8.4.8, local parts ignored)."""
    return tuple(int(m.group()) if (m := re.match(r"\d+", p)) else 0 for p in v.split("+")[0].split(".")[:3])


def has(feature: str) -> bool:
    """Whether the installed Ultralytics has ``feature`` (a key of :data:`FEATURES`)."""
    return installed() >= release(FEATURES[feature])


def require(feature: str, what: str | None = None) -> None:
    """Raise the one line for ``feature`` (asked for as ``what``) when the installed Ultralytics lacks it.

    Raises:
        PruneError: Naming the feature, the first release that has it and the installed one.
    """
    if not has(feature):
        first = FEATURES[feature]
        why, instead = WHY.get(feature, ("it arrived in {first}", "leave it out"))
        raise PruneError(
            f"{what or feature} needs ultralytics>={first} ({why.format(first=first)}), and {version('ultralytics')} "
            f"is installed; accepted: pip install 'ultralytics>={first}{',' + UPPER if UPPER else ''}', or {instead}"
        )


def check_keys(keys: dict) -> None:
    """The feature line for any key set in ``keys`` (not None or False) that needs a later Ultralytics release."""
    for k, v in keys.items():
        if k in FEATURE_KEYS and v is not None and v is not False:
            require(FEATURE_KEYS[k], f"{k}={v}")
