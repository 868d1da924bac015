"""The built-in synthetic dataset: deterministic, valid labels, small objects, loadable by Ultralytics offline."""

from pathlib import Path

import numpy as np
import pytest

from yolo_prune.cfg import PruneError
from yolo_prune.datasets import NAMES, builtin_dataset, make_image, resolve_data


def test_deterministic_and_prefix_stable():
    a_img, a_lab = make_image(0, 5)
    b_img, b_lab = make_image(0, 5)
    assert np.array_equal(a_img, b_img) and a_lab == b_lab
    assert not np.array_equal(make_image(0, 6)[0], a_img)
    assert not np.array_equal(make_image(1, 5)[0], a_img)  # val (seed 1) differs from train (seed 0)


def test_labels_are_valid_and_varied():
    labels = [lab for i in range(60) for lab in make_image(0, i)[1]]
    cls = np.array([c for c, *_ in labels])
    box = np.array([b for _, *b in labels])
    assert len(labels) > 150
    assert set(cls.tolist()) == set(range(len(NAMES)))
    assert ((box >= 0) & (box <= 1)).all()
    assert (box[:, 2] * 320 < 16).mean() > 0.15  # small objects: many boxes under 16 px wide at 320
    assert (box[:, 2] * 320 > 64).mean() > 0.05  # and some large ones


def test_builtin_yaml_loads_in_ultralytics(tiny_data):
    from ultralytics.data.utils import check_det_dataset

    d = check_det_dataset(tiny_data)
    assert d["nc"] == len(NAMES)
    assert len(list(Path(d["train"]).glob("*.jpg"))) == 8 and len(list(Path(d["val"]).glob("*.jpg"))) == 2
    assert resolve_data("shapes-8") == tiny_data  # cached, not regenerated
    assert resolve_data("coco8.yaml") == "coco8.yaml"  # non-builtin names pass through


def test_bad_builtin_name():
    with pytest.raises(PruneError, match="accepted: shapes"):
        builtin_dataset("circles")


def test_every_shipped_model_resolves_and_is_a_trained_shapes_detector():
    """Each name in MODELS is a file in the package, loads in plain Ultralytics, and knows the built-in classes."""
    from ultralytics import YOLO

    from yolo_prune.assets import ASSETS, MODELS, resolve_model

    for name in MODELS:
        assert resolve_model(name) == str(ASSETS / name)
        model = YOLO(resolve_model(name))
        assert model.task == "detect" and len(model.names) == 6, name
        assert model.ckpt["train_args"]["epochs"] == 150 and model.ckpt["train_args"]["imgsz"] == 128, name
    assert {n.split("-")[0] for n in MODELS} == {"yolo11n", "yolo26n", "yolo11s", "yolo26s"}
