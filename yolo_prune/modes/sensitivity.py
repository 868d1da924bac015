"""Sensitivity analysis: prune each layer alone at several ratios, validate, and chart the mAP drop per layer.

``yolo-prune sensitivity model=... data=... ratios=0.1,0.3,0.5`` writes ``sensitivity.csv`` and ``sensitivity.png``;
``prune_method=sensitivity prune_sensitivity=<csv>`` then gives each layer the ratio that costs the least mAP per
GFLOP saved (:func:`removed_for_target`). The unit is an Ultralytics layer index (``model.<i>``): every coupled group
rooted there is pruned together, which is the granularity ``prune_layers`` and ``prune_ignore`` use too.

The allocator and the table reader live in :mod:`yolo_prune.engine.allocate` (the engine plans with them).
"""

from __future__ import annotations

import copy
import csv
import logging
from pathlib import Path
from typing import Any

import torch.nn as nn
from ultralytics.utils import LOGGER, TQDM
from ultralytics.utils.files import increment_path

from ..cfg import KEYS, MODE_KEYS, PruneError, imgsz_value
from ..checkpoint import atomic_write_bytes, load_model
from ..datasets import resolve_data
from ..engine.allocate import body_signature, layer_plan
from ..engine.graph import check_supported, prepare_model
from ..engine.plan import apply_plan
from ..engine.pruner import ChannelPruner, model_info

D = MODE_KEYS["sensitivity"]  # the mode's defaults, as the CLI and the key reference give them
COLUMNS = ("layer", "ratio", "channels_removed", "params", "gflops", "map50", "map50_95", "drop", "body")


def check_ratios(ratios: Any) -> list[float]:
    """``ratios=0.1,0.3,0.5`` (a tuple once parsed), a list, or one number; each 0 < r < 1."""
    items = ratios.split(",") if isinstance(ratios, str) else ratios if isinstance(ratios, (list, tuple)) else [ratios]
    try:
        out = sorted({float(r) for r in items})
    except (TypeError, ValueError):
        out = []
    if not out or any(not 0 < r < 1 for r in out):
        raise PruneError(
            f"ratios={ratios!r} is invalid; accepted: channel ratios 0-1, comma-separated, e.g. 0.1,0.3,0.5"
        )
    return out


class Validator:
    """mAP of in-memory models on one dataset, reusing Ultralytics' DetectionValidator and its dataloader."""

    def __init__(self, data: str, imgsz: int, batch: int, device: str = "cpu"):
        import tempfile

        from ultralytics.models.yolo.detect import DetectionValidator

        args = {"data": data, "imgsz": imgsz, "batch": batch, "device": device, "plots": False, "verbose": False}
        # a scratch folder: a validator makes <project>/detect/val-N otherwise, empty since plots are off
        self._scratch = tempfile.TemporaryDirectory(prefix="yolo-prune-sensitivity-")
        self.validator = DetectionValidator(save_dir=Path(self._scratch.name), args=args)

    def __call__(self, model: nn.Module) -> tuple[float, float]:
        """(mAP50, mAP50-95) of a copy of ``model`` (the validator fuses what it gets)."""
        m = copy.deepcopy(model).float().eval()
        level = LOGGER.level
        LOGGER.setLevel(logging.WARNING)  # one progress bar for the whole analysis, not a table per validation
        try:
            stats = self.validator(model=m)
        finally:
            LOGGER.setLevel(level)
        return float(stats["metrics/mAP50(B)"]), float(stats["metrics/mAP50-95(B)"])


def sensitivity(
    model: nn.Module,
    data: str,
    ratios=(0.1, 0.3, 0.5),
    imgsz: int = 640,
    batch: int = 16,
    layers=None,
    method: str = "l2",
    prune_round: int = KEYS["prune_round"].default,
    device: str = "cpu",
    save_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Prune each layer alone at each ratio, validate, and return one row per (layer, ratio) plus the baseline.

    Writes ``sensitivity.csv`` and ``sensitivity.png`` to ``save_dir`` when given.
    """
    check_supported(model)
    prepare_model(model)
    ratios = check_ratios(ratios)
    pruner = ChannelPruner(model, method, prune_round)
    units = pruner.layer_keys()
    if layers is not None:
        wanted = [int(x) for x in (layers if isinstance(layers, (list, tuple)) else [layers])]
        bad = [x for x in wanted if x not in units]
        if bad:
            raise PruneError(f"layers={bad[0]} has no prunable channels; accepted: {','.join(map(str, units))}")
        units = wanted
    val = Validator(data, imgsz, batch, device)
    info = model_info(model, imgsz)
    map50, base = val(model)
    rows = [{"layer": "none", "ratio": 0.0, "channels_removed": 0, **info, "map50": map50, "map50_95": base,
             "drop": 0.0, "body": body_signature(model)}]  # fmt: skip
    for layer, ratio in TQDM([(u, r) for u in units for r in ratios], desc="yolo-prune sensitivity"):
        removed = layer_plan(pruner, layer, ratio)
        if not any(removed):  # too few channels to remove one rounding unit at this ratio
            continue
        pruned = apply_plan(copy.deepcopy(model), pruner.plan_removed(removed))
        m50, m = val(pruned)
        rows.append(
            {"layer": layer, "ratio": ratio, "channels_removed": sum(removed), **model_info(pruned, imgsz),
             "map50": m50, "map50_95": m, "drop": base - m}
        )  # fmt: skip
    if save_dir is not None:
        write(rows, Path(save_dir))
    return rows


def write(rows: list[dict[str, Any]], save_dir: Path) -> None:
    """sensitivity.csv and sensitivity.png (mAP50-95 drop per layer, one line per ratio), each written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    save_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()})
    atomic_write_bytes(save_dir / "sensitivity.csv", buf.getvalue().encode())

    fig, ax = plt.subplots(figsize=(10, 4), dpi=120)
    for ratio in sorted({r["ratio"] for r in rows if r["layer"] != "none"}):
        pts = [(r["layer"], r["drop"]) for r in rows if r["layer"] != "none" and r["ratio"] == ratio]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"ratio {ratio:g}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(
        xlabel="layer (model.<i>)",
        ylabel="mAP50-95 drop",
        title=f"Sensitivity (baseline mAP50-95 {rows[0]['map50_95']:.3f})",
    )
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write_bytes(save_dir / "sensitivity.png", png.getvalue())


def sensitivity_run(
    model: str | Path,
    data: str,
    ratios=D["ratios"],
    imgsz: int = D["imgsz"],
    batch: int = D["batch"],
    layers=D["layers"],
    prune_method: str = D["prune_method"],
    prune_round: int = D["prune_round"],
    device: str = D["device"],
    project: str | Path = D["project"],
    name: str = D["name"],
    exist_ok: bool = D["exist_ok"],
) -> Path:
    """``yolo-prune sensitivity``: load ``model``, run :func:`sensitivity`, save its table under ``project/name``.

    Args:
        model: A checkpoint or model yaml.
        data: The dataset each pruned layer is validated on.
        ratios, imgsz, batch, layers, prune_method, prune_round, device: As the keys of the same names
            (``yolo-prune help sensitivity``).
        project, name, exist_ok: The run folder, as Ultralytics names runs.

    Returns:
        The run folder, holding ``sensitivity.csv`` and ``sensitivity.png``.
    """
    check_ratios(ratios)
    imgsz = imgsz_value("imgsz", imgsz)
    if not data:
        raise PruneError("data is required; accepted: data=<dataset yaml or built-in name, e.g. shapes>")
    data = resolve_data(data)
    net = load_model(model).model
    if net.task != "detect":
        raise PruneError(
            f"model: sensitivity analysis validates detection mAP; accepted: a detect model, not {net.task}"
        )
    save_dir = Path(increment_path(Path(project) / name, exist_ok=exist_ok))
    rows = sensitivity(net, data, ratios, imgsz, batch, layers, prune_method, prune_round, device, save_dir=save_dir)
    worst = max(rows[1:], key=lambda r: r["drop"], default=None)
    if worst:
        LOGGER.info(
            f"yolo-prune: most sensitive: layer {worst['layer']} at ratio {worst['ratio']} (drop {worst['drop']:.3f})"
        )
    LOGGER.info(f"yolo-prune: sensitivity of {len(rows) - 1} prunes -> {save_dir / 'sensitivity.csv'}")
    return save_dir
