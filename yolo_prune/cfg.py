"""yolo-prune's own settings: names, defaults and validation.

They live here and never in Ultralytics' ``default.yaml`` or ``trainer.args`` (Ultralytics rejects unknown keys, also in
its DDP workers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PRUNE_DEFAULTS: dict[str, Any] = {
    "prune": None,  # fraction of GFLOPs to remove, 0 < prune < 1
    "prune_ratio": None,  # or: plain per-layer channel ratio, 0 < prune_ratio < 1
    "prune_method": "l2",  # importance criterion, see yolo_prune.importance
    "prune_round": 16,  # kept channel counts are multiples of this (16: best CPU realization, benchmarks/results/speed.md)
    "prune_global": False,  # rank channels across layers instead of the same ratio in every layer
    "prune_max_ratio": 0.9,  # with prune_global: the most any one layer may lose, so no layer vanishes
    "prune_ignore": None,  # layer indices (22) or module names (model.22.cv2) kept intact
    "prune_layers": None,  # per-layer channel ratios: {index or name: ratio}, or a yaml file of them
    "prune_sparsity": 0.0,  # L1 weight on BatchNorm scales while training towards each step (network slimming)
    "prune_mode": "structured",  # or unstructured / 2:4: zero weights in place instead of removing channels
    "prune_sensitivity": None,  # sensitivity.csv from 'yolo-prune sensitivity', for prune_method=sensitivity
    "prune_latency": None,  # or: fraction of the measured latency to remove on prune_runtime, 0 < prune_latency < 1
    "prune_runtime": "onnxruntime",  # where latency is measured: onnxruntime | openvino | torch (device=, CUDA fp16)
    "prune_threads": None,  # CPU threads of that runtime (default: the runtime's own)
}
PRUNE_MODES = ("structured", "unstructured", "2:4")
RUNTIMES = ("onnxruntime", "openvino", "torch")  # prune_runtime: where prune_latency is measured
# the versions the test suite passes on (benchmarks/compat.py); pyproject.toml declares the same ranges
SUPPORTED_ULTRALYTICS = "ultralytics>=8.4.190,<8.5"


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
    cfg["prune_latency"] = _fraction("prune_latency", cfg["prune_latency"])
    given = [k for k in ("prune", "prune_ratio", "prune_latency") if cfg[k] is not None]
    if len(given) > 1:
        raise PruneError(f"{' and '.join(given)} are exclusive; accepted: one of prune, prune_ratio, prune_latency")
    if cfg["prune_runtime"] not in RUNTIMES:
        raise PruneError(f"prune_runtime={cfg['prune_runtime']!r} is invalid; accepted: {', '.join(RUNTIMES)}")
    t = cfg["prune_threads"]
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
        raise PruneError(f"prune_threads={t!r} is invalid; accepted: an integer >= 1")
    if cfg["prune_method"] not in IMPORTANCES:
        raise PruneError(f"prune_method={cfg['prune_method']!r} is invalid; accepted: {', '.join(IMPORTANCES)}")
    r = cfg["prune_round"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise PruneError(f"prune_round={r!r} is invalid; accepted: an integer >= 1")
    if not isinstance(cfg["prune_global"], bool):
        raise PruneError(f"prune_global={cfg['prune_global']!r} is invalid; accepted: True or False")
    cfg["prune_max_ratio"] = _fraction("prune_max_ratio", cfg["prune_max_ratio"])
    cfg["prune_ignore"] = _ignore_list(cfg["prune_ignore"])
    cfg["prune_layers"] = _layer_ratios(cfg["prune_layers"])
    lam = cfg["prune_sparsity"]
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
        raise PruneError(f"prune_sparsity={lam!r} is invalid; accepted: a number >= 0 (L1 weight, e.g. 1e-3)")
    cfg["prune_sparsity"] = float(lam)
    if cfg["prune_mode"] not in PRUNE_MODES:
        raise PruneError(f"prune_mode={cfg['prune_mode']!r} is invalid; accepted: {', '.join(PRUNE_MODES)}")
    if cfg["prune_method"] == "sensitivity" and not cfg["prune_sensitivity"]:
        raise PruneError(
            "prune_method=sensitivity needs prune_sensitivity=<sensitivity.csv>; accepted: the CSV written by "
            "'yolo-prune sensitivity'"
        )
    if cfg["prune_sensitivity"] and not Path(str(cfg["prune_sensitivity"])).is_file():
        raise PruneError(f"prune_sensitivity={cfg['prune_sensitivity']!r} is not a file; accepted: a sensitivity.csv")
    return cfg


def _ignore_list(v: Any) -> list[int | str]:
    """``prune_ignore``: None, one index/name, a list/tuple of them, or a comma-separated string."""
    if v is None:
        return []
    items = v.split(",") if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else [v]
    out: list[int | str] = []
    for x in items:
        x = x.strip() if isinstance(x, str) else x
        if isinstance(x, str) and x.isdigit():
            x = int(x)
        if isinstance(x, bool) or not isinstance(x, (int, str)) or x == "" or (isinstance(x, int) and x < 0):
            raise PruneError(f"prune_ignore={v!r} is invalid; accepted: layer indices or module names, e.g. 0,22")
        out.append(x)
    return out


def _layer_ratios(v: Any) -> dict[int | str, float]:
    """``prune_layers``: a dict {layer index or module name: channel ratio}, or the path of a yaml file holding one."""
    if v is None:
        return {}
    if isinstance(v, (str, Path)):
        path = Path(v)
        if not path.is_file():
            raise PruneError(f"prune_layers={str(v)!r} is not a file; accepted: a yaml file of 'layer: ratio' lines")
        try:
            v = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise PruneError(f"prune_layers={str(path)!r} is not valid yaml ({type(e).__name__})") from None
    if not isinstance(v, dict):
        raise PruneError(f"prune_layers={v!r} is invalid; accepted: {{layer index or module name: ratio 0-1}}")
    out: dict[int | str, float] = {}
    for k, r in v.items():
        if isinstance(k, bool) or not isinstance(k, (int, str)):
            raise PruneError(f"prune_layers key {k!r} is invalid; accepted: a layer index or a module name")
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise PruneError(f"prune_layers[{k!r}]={r!r} is invalid; accepted: a channel ratio with 0 <= ratio < 1")
        out[int(k) if isinstance(k, str) and k.isdigit() else k] = float(r)
    return out
