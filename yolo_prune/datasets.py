"""Built-in offline detection dataset: synthetic shapes, generated deterministically on first use.

``data=shapes`` (1,000 train / 250 val images) or ``data=shapes-N`` (N train, N/4 val, at least 2) work in every
``yolo-prune`` command; in Python, :func:`builtin_dataset` returns the yaml path for ``model.train(data=...)``.

Six classes (circle, rectangle, triangle, cross, star, ring) from 6 to 120 px on 320 px images, on textured
backgrounds with unlabeled clutter, low-contrast colours, blur and noise; later shapes occlude earlier ones and
labels follow the visible part (dropped below 30% visible). Rings vs circles and small rotated stars vs crosses keep
a nano model from saturating it in a few epochs. Each image depends only on its split and index, so a small set is a
prefix of a large one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np

from .cfg import PruneError

NAMES = ("circle", "rectangle", "triangle", "cross", "star", "ring")
VERSION = 1  # bump when the generator changes, so caches are not reused across versions
_PATTERN = re.compile(r"^shapes(?:-(\d+))?(?:\.yaml)?$")


def cache_dir() -> Path:
    """Where generated datasets live: ``$YOLO_PRUNE_CACHE`` or ``~/.cache/yolo-prune``."""
    return Path(os.environ.get("YOLO_PRUNE_CACHE", Path.home() / ".cache" / "yolo-prune")) / "datasets"


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency coloured texture, fine noise and unlabeled line/blob clutter."""
    cells = rng.integers(3, 12)
    low = rng.uniform(40, 215, (cells, cells, 3)).astype(np.float32)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, rng.uniform(4, 18), (size, size, 3)).astype(np.float32)
    for _ in range(rng.integers(0, 10)):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        if rng.random() < 0.6:
            cv2.line(img, tuple(map(int, p1)), tuple(map(int, p2)), color, int(rng.integers(1, 4)))
        else:  # soft blob: clutter with no straight edges
            axes = tuple(int(a) for a in rng.integers(3, 25, 2))
            cv2.ellipse(img, tuple(map(int, p1)), axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    return img


def _polygon(cls: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if cls == 1:  # rectangle, aspect 0.5-1
        pts = [(-1, -0.6), (1, -0.6), (1, 0.6), (-1, 0.6)]
    elif cls == 2:  # triangle
        pts = [(np.cos(a), np.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    elif cls == 3:  # cross
        w = 0.33
        pts = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    else:  # star
        pts = [
            ((1.0 if i % 2 == 0 else 0.45) * np.cos(a), (1.0 if i % 2 == 0 else 0.45) * np.sin(a))
            for i, a in enumerate(np.deg2rad(np.arange(-90, 270, 36)))
        ]
    p = np.array(pts, dtype=np.float64) * r
    c, s = np.cos(angle), np.sin(angle)
    p = p @ np.array([[c, s], [-s, c]])
    return np.round(p + (cx, cy)).astype(np.int32)


def _draw_mask(cls: int, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    if cls == 0:
        cv2.circle(mask, (round(cx), round(cy)), round(r), 1, -1, cv2.LINE_AA)
    elif cls == 5:
        cv2.circle(mask, (round(cx), round(cy)), round(r), 1, -1, cv2.LINE_AA)
        cv2.circle(mask, (round(cx), round(cy)), max(1, round(r * 0.55)), 0, -1, cv2.LINE_AA)
    else:
        cv2.fillPoly(mask, [_polygon(cls, cx, cy, r, angle)], 1, cv2.LINE_AA)
    return mask


def make_image(
    seed: int, index: int, size: int = 320
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One image (BGR uint8) and its labels ``(cls, cx, cy, w, h)`` normalised; depends only on (seed, index)."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)
    objects = []
    for k in range(int(rng.integers(1, 13))):
        cls = int(rng.integers(0, len(NAMES)))
        r = float(np.exp(rng.uniform(np.log(3), np.log(60))))  # radius 3-60 px: log-uniform, many small objects
        cx, cy = rng.uniform(-0.2 * r, size + 0.2 * r, 2)
        mask = _draw_mask(cls, cx, cy, r, float(rng.uniform(0, 2 * np.pi)), size).astype(bool)
        if not mask.any():
            continue
        base = rng.uniform(0, 255, 3)
        if rng.random() < 0.3:  # low contrast against the local background
            base = img[mask].mean(0) + rng.normal(0, 35, 3)
        shade = base + rng.normal(0, rng.uniform(2, 12), (int(mask.sum()), 3))
        img[mask] = shade
        owner[mask] = k
        objects.append((k, cls, int(mask.sum())))
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.5)))
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    labels = []
    for k, cls, area in objects:
        ys, xs = np.nonzero(owner == k)
        if len(xs) < 0.3 * area or len(xs) < 9:
            continue  # mostly hidden or clipped away
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        labels.append((cls, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size))
    return img, labels


def generate(root: Path, n_train: int, n_val: int, size: int = 320) -> Path:
    """Write the dataset under ``root`` (atomically: a temp folder renamed when complete); returns its yaml."""
    yaml_path = root / "data.yaml"
    if yaml_path.is_file():
        return yaml_path
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for i in range(n):
            img, labels = make_image(seed, i, size)
            cv2.imwrite(str(tmp / "images" / split / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
            (tmp / "labels" / split / f"{i:06d}.txt").write_text(lines)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(NAMES))
    (tmp / "data.yaml").write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return yaml_path


def builtin_dataset(name: str = "shapes", train: int | None = None, val: int | None = None, imgsz: int = 320) -> str:
    """Path of the yaml of built-in dataset ``name`` (``shapes`` or ``shapes-N``), generating it on first use."""
    m = _PATTERN.match(str(name))
    if not m:
        raise PruneError(f"data={name!r} is not a built-in dataset; accepted: shapes, shapes-N (N train images)")
    n_train = train or int(m.group(1) or 1000)
    n_val = val or max(2, n_train // 4)
    if n_train < 1 or n_val < 1:
        raise PruneError(f"data={name!r} is invalid; accepted: at least 1 train and 1 val image")
    root = cache_dir() / f"shapes-v{VERSION}-{n_train}-{n_val}-{imgsz}"
    return str(generate(root, n_train, n_val, imgsz))


def is_builtin(data) -> bool:
    """Whether ``data`` names a built-in dataset."""
    return isinstance(data, str) and bool(_PATTERN.match(data))


def resolve_data(data):
    """Built-in dataset names become their yaml path; anything else is returned unchanged."""
    return builtin_dataset(data) if is_builtin(data) else data


def calibration_batches(data: str, imgsz: int, batch: int, n: int, model):
    """Up to ``n`` training batches of ``data`` (a dataset yaml), augmented as in training and preprocessed like the
    trainer does, on ``model``'s device: the input of gradient criteria outside a trainer."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(data)
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "workers": 0, "cache": False})
    dataset = build_yolo_dataset(cfg, info["train"], batch, info, mode="train", stride=32)
    loader = build_dataloader(dataset, batch, workers=0, shuffle=True)
    device = next(model.parameters()).device
    for i, b in enumerate(loader):
        if i >= n:
            break
        b["img"] = b["img"].to(device).float() / 255
        for k in ("batch_idx", "cls", "bboxes"):
            b[k] = b[k].to(device)
        yield b
