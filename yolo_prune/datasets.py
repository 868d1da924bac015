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
_PATTERN = re.compile(r"^shapes(?:-(seg|pose|obb|cls))?(?:-(\d+))?(?:\.yaml)?$")


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


def _render(seed: int, index: int, size: int, single: bool = False):
    """Image (BGR uint8), object list ``(k, cls, area, cx, cy, r)`` and the owner map (which object each pixel shows)."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)
    objects = []
    for k in range(int(rng.integers(1, 13)) if not single else 1):
        cls = int(rng.integers(0, len(NAMES))) if not single else index % len(NAMES)  # classify: balanced classes
        r = float(np.exp(rng.uniform(np.log(3), np.log(60))))  # radius 3-60 px: log-uniform, many small objects
        cx, cy = rng.uniform(-0.2 * r, size + 0.2 * r, 2)
        if single:  # one clearly visible object per image
            r = float(rng.uniform(0.12, 0.4) * size)
            cx, cy = rng.uniform(r, size - r, 2)
        mask = _draw_mask(cls, cx, cy, r, float(rng.uniform(0, 2 * np.pi)), size).astype(bool)
        if not mask.any():
            continue
        base = rng.uniform(0, 255, 3)
        if rng.random() < 0.3:  # low contrast against the local background
            base = img[mask].mean(0) + rng.normal(0, 35, 3)
        shade = base + rng.normal(0, rng.uniform(2, 12), (int(mask.sum()), 3))
        img[mask] = shade
        owner[mask] = k
        objects.append((k, cls, int(mask.sum()), float(cx), float(cy), r))
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.5)))
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return img, objects, owner


def make_image(
    seed: int, index: int, size: int = 320
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One image (BGR uint8) and its labels ``(cls, cx, cy, w, h)`` normalised; depends only on (seed, index)."""
    img, _, lines = make_sample(seed, index, size, "detect")
    return img, [(int(v[0]), *map(float, v[1:5])) for v in (line.split() for line in lines)]


def make_sample(seed: int, index: int, size: int = 320, task: str = "detect") -> tuple[np.ndarray, int, list[str]]:
    """One image, its class (the first object's, for ``classify``) and its label lines in Ultralytics' format for
    ``task``: ``cls cx cy w h`` (detect), ``cls x1 y1 x2 y2 ...`` polygon (segment), ``cls cx cy w h`` + 5 keypoints
    ``x y v`` (pose: centre, top, right, bottom, left of the shape), ``cls x1 y1 ... x4 y4`` rotated box (obb)."""
    img, objects, owner = _render(seed, index, size, single=task == "classify")
    lines = []
    for k, cls, area, cx, cy, r in objects:
        visible = owner == k
        ys, xs = np.nonzero(visible)
        if len(xs) < 0.3 * area or len(xs) < 9:
            continue  # mostly hidden or clipped away
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        box = (
            f"{cls} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
        )
        if task in ("detect", "classify"):
            lines.append(box)
        elif task == "segment":
            contours, _ = cv2.findContours(visible.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            c = max(contours, key=cv2.contourArea).reshape(-1, 2) / size
            if len(c) >= 3:
                lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in c.clip(0, 1).ravel()))
        elif task == "obb":
            corners = cv2.boxPoints(cv2.minAreaRect(np.stack([xs, ys], 1).astype(np.float32))) / size
            lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in corners.clip(0, 1).ravel()))
        elif task == "pose":
            kpts = []
            for px, py in ((cx, cy), (cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)):
                inside = 0 <= px < size and 0 <= py < size
                v = (2 if owner[int(py), int(px)] == k else 1) if inside else 0
                kpts += [px / size, py / size, v] if inside else [0.0, 0.0, 0]
            lines.append(box + " " + " ".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in kpts))
    return img, (objects[0][1] if objects else 0), lines


TASKS = {"detect": "", "segment": "seg", "pose": "pose", "obb": "obb", "classify": "cls"}  # task -> name suffix
_SUFFIX_TASK = {v: k for k, v in TASKS.items()}
POSE_YAML = "kpt_shape: [5, 3]\nflip_idx: [0, 1, 4, 3, 2]\n"  # centre, top, right, bottom, left: a flip swaps r/l


def generate(root: Path, n_train: int, n_val: int, size: int = 320, task: str = "detect") -> Path:
    """Write the dataset under ``root`` (atomically: a temp folder renamed when complete); returns its yaml, or for
    ``classify`` its folder (``train/<class>/*.jpg``, ``val/<class>/*.jpg``, as Ultralytics expects)."""
    done = root if task == "classify" else root / "data.yaml"
    if (root / "data.yaml").is_file():
        return done
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        if task == "classify":
            for name in NAMES:
                (tmp / split / name).mkdir(parents=True)
        else:
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
        for i in range(n):
            img, cls, lines = make_sample(seed, i, size, task)
            if task == "classify":
                cv2.imwrite(str(tmp / split / NAMES[cls] / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
                continue
            cv2.imwrite(str(tmp / "images" / split / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            (tmp / "labels" / split / f"{i:06d}.txt").write_text("".join(f"{line}\n" for line in lines))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(NAMES))
    extra = POSE_YAML if task == "pose" else ""
    (tmp / "data.yaml").write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n{extra}names:\n{names}\n"
    )  # for classify the folder is the dataset; the yaml only marks it complete
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return done


def builtin_dataset(
    name: str = "shapes", train: int | None = None, val: int | None = None, imgsz: int = 320, task: str | None = None
) -> str:
    """Path of built-in dataset ``name`` (``shapes[-seg|-pose|-obb|-cls][-N]``), generated on first use.

    Args:
        name: ``shapes`` plus an optional task suffix and image count (``shapes-pose-200``).
        train: Training images (default: from ``name``).
        val: Validation images (default: a quarter of ``train``).
        imgsz: Side of the generated images.
        task: A plain ``shapes[-N]`` follows it (a segmentation run gets ``shapes-seg``).

    Returns:
        The dataset yaml, or the folder for classification (as Ultralytics takes ``data=``).
    """
    m = _PATTERN.match(str(name))
    if not m:
        raise PruneError(
            f"data={name!r} is not a built-in dataset; accepted: shapes, shapes-N, shapes-seg|pose|obb|cls[-N]"
        )
    task = _SUFFIX_TASK[m.group(1)] if m.group(1) else (task or "detect")
    if task not in TASKS:
        raise PruneError(f"task={task!r} has no built-in dataset; accepted: {', '.join(TASKS)}")
    n_train = train or int(m.group(2) or 1000)
    n_val = val or max(2 if task != "classify" else len(NAMES), n_train // 4)
    if n_train < 1 or n_val < 1:
        raise PruneError(f"data={name!r} is invalid; accepted: at least 1 train and 1 val image")
    suffix = f"-{TASKS[task]}" if TASKS[task] else ""
    root = cache_dir() / f"shapes{suffix}-v{VERSION}-{n_train}-{n_val}-{imgsz}"
    return str(generate(root, n_train, n_val, imgsz, task))


def is_builtin(data) -> bool:
    """Whether ``data`` names a built-in dataset."""
    return isinstance(data, str) and bool(_PATTERN.match(data))


def resolve_data(data, task: str | None = None):
    """Built-in dataset names become their yaml path (their folder for classify); anything else is unchanged.

    Args:
        data: A ``data=`` value: a built-in name (``shapes-8``), or a path / Ultralytics dataset name.
        task: The task a plain ``shapes`` name follows.
    """
    return builtin_dataset(data, task=task) if is_builtin(data) else data


def calibration_batches(data: str, imgsz: int, batch: int, n: int, model):
    """Up to ``n`` training batches of ``data`` (a dataset yaml), augmented as in training and preprocessed like the
    trainer does, on ``model``'s device: the input of gradient criteria outside a trainer."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    task = getattr(model, "task", "detect")
    if task == "classify":
        raise PruneError(
            "gradient criteria one-shot need a detect/segment/pose/obb model; for classify, prune in training"
        )
    info = check_det_dataset(data)
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "workers": 0, "cache": False, "task": task})
    dataset = build_yolo_dataset(cfg, info["train"], batch, info, mode="train", stride=32)
    loader = build_dataloader(dataset, batch, workers=0, shuffle=True)
    device = next(model.parameters()).device
    for i, b in enumerate(loader):
        if i >= n:
            break
        b["img"] = b["img"].to(device).float() / 255
        for k in ("batch_idx", "cls", "bboxes", "masks", "keypoints"):
            if k in b:
                b[k] = b[k].to(device)
        yield b
