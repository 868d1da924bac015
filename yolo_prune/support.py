"""What the installed Ultralytics release can do: features newer releases brought, and the one line for a missing one.

yolo-prune works with every Ultralytics release in ``SUPPORTED_ULTRALYTICS`` (``benchmarks/compat.py`` runs the suite
against the range). Some features need a later release than the oldest; asking for one on an earlier release stops the
run before anything is written, with one line naming the feature and the first release that has it. The version is read
from the installed package's metadata, so ``yolo-prune help`` still imports nothing heavy.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import version

from .cfg import SUPPORTED_ULTRALYTICS, PruneError

# feature -> first Ultralytics release that has it in the form yolo-prune uses (benchmarks/results/compat.md)
FEATURES = {
    "distillation": "8.4.77",  # DistillationModel, default.yaml's distill_model / dis
    "quantize": "8.4.80",  # export's quantize= (earlier releases take half= / int8=)
    "yolo26 export": "8.4.142",  # the rule that exports YOLO26 NMS-free only with nms=False, and Detect.fuse keeping it
}
# Ultralytics keys a feature brought: asking for them on an earlier release gives the feature's line
FEATURE_KEYS = {"distill_model": "distillation", "dis": "distillation", "prune_distill": "distillation",
                "quantize": "quantize"}  # fmt: skip


@lru_cache(maxsize=1)
def installed() -> tuple[int, ...]:
    """The installed Ultralytics release as a tuple (8, 4, 190)."""
    return release(version("ultralytics"))


def release(v: str) -> tuple[int, ...]:
    """``"8.4.190"`` -> ``(8, 4, 190)`` (pre-release and local parts ignored)."""
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in v.split("+")[0].split(".")[:3])


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
        raise PruneError(
            f"{what or feature} needs ultralytics>={first} ({feature} arrived there), and {version('ultralytics')} "
            f"is installed; accepted: pip install 'ultralytics>={first}' (yolo-prune supports "
            f"{SUPPORTED_ULTRALYTICS.removeprefix('ultralytics')}), or leave it out"
        )


def check_keys(keys: dict) -> None:
    """The feature line for any key set in ``keys`` (not None or False) that needs a later Ultralytics release."""
    for k, v in keys.items():
        if k in FEATURE_KEYS and v not in (None, False):
            require(FEATURE_KEYS[k], f"{k}={v}")
