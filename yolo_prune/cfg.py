"""yolo-prune's own settings: names, defaults and validation.

They live here and never in Ultralytics' ``default.yaml`` or ``trainer.args`` (Ultralytics rejects unknown keys, also in
its DDP workers).
"""

from __future__ import annotations

from typing import Any

PRUNE_DEFAULTS: dict[str, Any] = {
    "prune": None,  # fraction of GFLOPs to remove, 0 < prune < 1
    "prune_ratio": None,  # or: plain per-layer channel ratio, 0 < prune_ratio < 1
    "prune_method": "l2",  # importance criterion, see yolo_prune.importance
    "prune_round": 16,  # kept channel counts are multiples of this (16: best CPU realization, benchmarks/results/speed.md)
}


class PruneError(ValueError):
    """Bad input. The message is one line naming the key (or file) and what is accepted."""


def _fraction(key: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise PruneError(f"{key}={v!r} is invalid; accepted: a number with 0 < {key} < 1")
    return float(v)


def check_prune_args(args: dict[str, Any]) -> dict[str, Any]:
    """Return ``PRUNE_DEFAULTS`` updated with ``args``, validated; raise PruneError on the first bad key."""
    from .importance import IMPORTANCES

    unknown = set(args) - set(PRUNE_DEFAULTS)
    if unknown:
        key = sorted(unknown)[0]
        raise PruneError(f"'{key}' is not a valid yolo-prune key; accepted: {', '.join(PRUNE_DEFAULTS)}")
    cfg = {**PRUNE_DEFAULTS, **args}
    cfg["prune"] = _fraction("prune", cfg["prune"])
    cfg["prune_ratio"] = _fraction("prune_ratio", cfg["prune_ratio"])
    if cfg["prune"] is not None and cfg["prune_ratio"] is not None:
        raise PruneError("prune and prune_ratio are exclusive; accepted: one of them")
    if cfg["prune_method"] not in IMPORTANCES:
        raise PruneError(f"prune_method={cfg['prune_method']!r} is invalid; accepted: {', '.join(IMPORTANCES)}")
    r = cfg["prune_round"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise PruneError(f"prune_round={r!r} is invalid; accepted: an integer >= 1")
    return cfg
