"""The one config: every yolo-prune key, its default, what it accepts, and every rule between keys.

Plugin keys never enter Ultralytics' ``default.yaml`` or ``trainer.args`` (Ultralytics rejects unknown keys, also in
its DDP workers). They are validated once, where a run enters (the CLI, :func:`~yolo_prune.add_pruning`,
:class:`~yolo_prune.PruneCallbacks`, :func:`~yolo_prune.prune_model` via the one-shot mode), into a frozen
:class:`PruneConfig`; the same names are used all the way down, in the engine's arguments and in the checkpoint's
``prune_state``. ``yolo-prune help`` (:func:`yolo_prune.cli.help_text`) and the docs' key reference
(``python -m yolo_prune.cfg``) are generated from :data:`KEYS` and :data:`MODE_KEYS`.

This module imports nothing of torch, Ultralytics or the rest of the package, so ``yolo-prune help`` is instant.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

SUPPORTED_ULTRALYTICS = "ultralytics>=8.4.8,<8.5"  # what benchmarks/compat.py passed; pyproject.toml declares it
SUPPORTED_MODELS = "YOLOv8 / YOLO11 / YOLO26 detect, segment, pose, obb and classify models"
PRUNE_MODES = ("structured", "unstructured", "2:4")
# CPU runtimes an export runs on, and the Ultralytics export format each runs (yolo_prune.engine.backends loads them)
RUNTIME_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino", "ncnn": "ncnn", "litert": "litert",
                   "executorch": "executorch", "mnn": "mnn"}  # fmt: skip
RUNTIMES = (*RUNTIME_FORMATS, "torch")  # prune_runtime: where prune_latency is measured
# prune_runtime also takes the export format a runtime runs (format=, formats=), and Ultralytics' alias tflite
RUNTIME_ALIASES = {**{f: r for r, f in RUNTIME_FORMATS.items() if f != r}, "tflite": "litert"}
FORMATS = tuple(RUNTIME_FORMATS.values())  # benchmark formats= (each timed on its runtime)
# importance criteria by name (yolo_prune.engine.importance builds them; register() adds more at run time)
METHODS = ["l1", "l2", "bn", "taylor", "lamp", "fpgm", "hessian", "random", "sensitivity"]
HEAD_TASKS = ("detect", "segment", "pose", "obb")  # tasks with a detection head (Ultralytics distills their necks)
TARGETS = ("prune", "prune_ratio", "prune_latency")  # mutually exclusive: how much to remove
# deprecated export keys Ultralytics still maps (half/int8 -> quantize, end2end -> nms) but no longer lists
ULTRALYTICS_ALIASES = {"half": "quantize=16", "int8": "quantize=8", "end2end": "nms"}


class PruneError(ValueError):
    """Bad input. The message is one line naming the key (or file) and what is accepted."""


# --- value parsers: (key, value) -> normalised value, PruneError naming the key otherwise --------------------------
def _bad(key: str, v: Any, accepts: str) -> PruneError:
    return PruneError(f"{key}={v!r} is invalid; accepted: {accepts}")


def fraction(key: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise _bad(key, v, f"a number with 0 < {key} < 1")
    return float(v)


def positive_int(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _bad(key, v, "an integer >= 1")
    return v


def optional_int(key: str, v: Any) -> int | None:
    return None if v is None else positive_int(key, v)


def epoch(key: str, v: Any) -> int | None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise _bad(key, v, "an epoch number >= 0")
    return v


def boolean(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _bad(key, v, "True or False")
    return v


def choice(options) -> Callable[[str, Any], Any]:
    def parse(key: str, v: Any) -> Any:
        if v not in options:
            raise _bad(key, v, ", ".join(map(str, options)))
        return v

    return parse


def runtime_name(key: str, v: Any) -> str:
    """A ``prune_runtime``: a runtime's name, or the export format it runs (``onnx`` -> ``onnxruntime``)."""
    name = str(v).strip().lower()
    name = RUNTIME_ALIASES.get(name, name)
    if name not in RUNTIMES:
        raise _bad(key, v, ", ".join(RUNTIMES))  # named as given
    return name


def non_negative(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise _bad(key, v, "a number >= 0 (L1 weight, e.g. 1e-3)")
    return float(v)


def existing_file(key: str, v: Any) -> str | None:
    if v is None or v == "":
        return None
    if not Path(str(v)).is_file():
        raise PruneError(f"{key}={str(v)!r} is not a file; accepted: a sensitivity.csv of 'yolo-prune sensitivity'")
    return str(v)


def layer_list(key: str, v: Any) -> tuple[int | str, ...]:
    """``prune_ignore``: None, one index/name, a list/tuple of them, or a comma-separated string."""
    if v is None:
        return ()
    items = v.split(",") if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else [v]
    out: list[int | str] = []
    for x in items:
        x = x.strip() if isinstance(x, str) else x
        if isinstance(x, str) and x.isdigit():
            x = int(x)
        if isinstance(x, bool) or not isinstance(x, (int, str)) or x == "" or (isinstance(x, int) and x < 0):
            raise _bad(key, v, "layer indices or module names, e.g. 0,22")
        out.append(x)
    return tuple(out)


def layer_ratios(key: str, v: Any) -> dict[int | str, float]:
    """``prune_layers``: a dict {layer index or module name: channel ratio}, or the path of a yaml file holding one."""
    if v is None:
        return {}
    if isinstance(v, (str, Path)):
        import yaml

        path = Path(v)
        if not path.is_file():
            raise PruneError(f"{key}={str(v)!r} is not a file; accepted: a yaml file of 'layer: ratio' lines")
        try:
            v = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise PruneError(f"{key}={str(path)!r} is not valid yaml ({type(e).__name__})") from None
    if not isinstance(v, dict):
        raise _bad(key, v, "{layer index or module name: ratio 0-1}")
    out: dict[int | str, float] = {}
    for k, r in v.items():
        if isinstance(k, bool) or not isinstance(k, (int, str)):
            raise PruneError(f"{key} key {k!r} is invalid; accepted: a layer index or a module name")
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise PruneError(f"{key}[{k!r}]={r!r} is invalid; accepted: a channel ratio with 0 <= ratio < 1")
        out[int(k) if isinstance(k, str) and k.isdigit() else k] = float(r)
    return out


def imgsz_value(key: str, v: Any) -> int:
    """A positive multiple of 32 (the stride of every YOLO model)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 32 or v % 32:
        raise _bad(key, v, "a positive multiple of 32, e.g. 640")
    return v


@dataclass(frozen=True)
class Key:
    """One key: its default, what it accepts (as the docs and error lines say it), its parser and its modes."""

    default: Any
    accepts: str
    help: str
    parse: Callable[[str, Any], Any] = lambda k, v: v  # noqa: E731
    modes: tuple[str, ...] = ("train", "prune")
    default_text: str | None = None  # how the docs show a computed default


TRAIN, ONESHOT, BOTH = ("train",), ("prune",), ("train", "prune")
# The plugin's keys (train and one-shot prune). PruneConfig has one field per key, in this order.
KEYS: dict[str, Key] = {
    "prune": Key(None, "0 < prune < 1", "fraction of the model's GFLOPs to remove (sparse modes: of the weights)",
                 fraction),
    "prune_ratio": Key(None, "0 < prune_ratio < 1", "instead of prune: one channel ratio for every layer", fraction,
                       ONESHOT),
    "prune_latency": Key(None, "0 < prune_latency < 1", "instead of prune: fraction of the measured latency to remove "
                         "on prune_runtime", fraction),
    "prune_steps": Key(None, "an integer >= 1", "number of prune steps; each removes an equal share", optional_int,
                       TRAIN, "up to 4"),
    "prune_start": Key(None, "an epoch >= 0", "epoch of the first step (0-based, at the start of that epoch)", epoch,
                       TRAIN, "~10% of epochs (at least 1)"),
    "prune_end": Key(None, "an epoch >= prune_start", "epoch of the last step; later epochs fine-tune", epoch, TRAIN,
                     "leaves >= 60% of epochs"),
    "prune_method": Key("l2", " | ".join(METHODS), "importance criterion", lambda k, v: choice(METHODS)(k, v)),
    "prune_round": Key(16, "an integer >= 1", "kept channel counts are multiples of this", positive_int),
    "prune_global": Key(False, "True or False", "rank channels across layers instead of one ratio for all", boolean),
    "prune_max_ratio": Key(0.9, "0 < prune_max_ratio < 1", "with prune_global: the most any layer may lose", fraction),
    "prune_ignore": Key(None, "layer indices or module names, e.g. 0,22", "layers kept intact", layer_list),
    "prune_layers": Key(None, "{layer: ratio} or a yaml file of them", "fixed per-layer channel ratios", layer_ratios),
    "prune_sparsity": Key(0.0, "a number >= 0", "L1 weight on BatchNorm scales while training towards each step",
                          non_negative),
    "prune_reg": Key(0.0, "a number >= 0", "DepGraph group regularization towards each step: per optimizer step a "
                     "coupled group decays by lr*prune_reg, its weakest channel 16x that", non_negative, TRAIN),
    "prune_mode": Key("structured", " | ".join(PRUNE_MODES), "remove channels, or zero weights in place",
                      choice(PRUNE_MODES)),
    "prune_sensitivity": Key(None, "a sensitivity.csv", "for prune_method=sensitivity: the table of "
                             "'yolo-prune sensitivity'", existing_file),
    "prune_runtime": Key("onnxruntime", " | ".join(RUNTIMES), "where prune_latency is measured (ncnn, litert, "
                         "executorch, mnn: the [edge] extra; torch: device=, CUDA fp16; onnx and tflite name onnxruntime and litert)",
                         runtime_name),
    "prune_threads": Key(None, "an integer >= 1", "CPU threads of that runtime (default: the runtime's own)",
                         optional_int),
    "prune_distill": Key(False, "True or False", "distill from the model as it was just before its first step, with "
                         "Ultralytics' weight dis (1.0 measured better than its default 6.0)", boolean, TRAIN),
}  # fmt: skip

# Keys of the modes yolo-prune runs itself (besides the plugin keys they take); train takes every 'yolo train' key.
OUT = {"project": None, "name": "exp", "exist_ok": False}
MODE_KEYS: dict[str, dict[str, Any]] = {
    "prune": {"model": None, "imgsz": 640, "data": None, "batch": 16, "device": None, **OUT, "project": "runs/prune"},
    "sensitivity": {"model": None, "data": None, "ratios": "0.1,0.3,0.5", "imgsz": 640, "batch": 16, "layers": None,
                    "prune_method": "l2", "prune_round": 16, "device": "cpu", **OUT, "project": "runs/sensitivity"},
    "benchmark": {"model": None, "base": None, "data": None, "imgsz": 640, "formats": "onnx,openvino",
                  "device": "cpu", "runs": 100, "threads": None, **OUT, "project": "runs/benchmark"},
}  # fmt: skip
MODEL_KEYS = ("model", "base", "distill_model")  # keys that name a model file (shipped names resolve)


def mode_keys(mode: str) -> list[str]:
    """The plugin keys a mode takes (``train`` or ``prune``)."""
    return [k for k, key in KEYS.items() if mode in key.modes]


def other_mode(key: str, accepted) -> str | None:
    """The line for a plugin key of another mode (``prune_ratio`` in training, ``prune_steps`` one-shot), or None."""
    if key not in KEYS:
        return None
    where = "one-shot 'yolo-prune prune'" if "prune" in KEYS[key].modes else "training ('yolo-prune train')"
    return f"{key} is for {where} only; accepted here: {', '.join(k for k in accepted if k in KEYS)}"


def suggest(key: str, accepted) -> str:
    """``"did you mean 'x'? "`` for the closest accepted key (plugin keys also by their name after ``prune_``), or
    ``""``."""
    names = {}
    for k in accepted:
        names.setdefault(k, k)
        names.setdefault(k.removeprefix("prune_"), k)
    close = difflib.get_close_matches(key.removeprefix("prune_"), list(names), n=1)
    close = close or difflib.get_close_matches(key, list(names), n=1)
    return f"did you mean '{names[close[0]]}'? " if close else ""


@dataclass(frozen=True)
class PruneConfig:
    """Validated plugin keys. Build it with :meth:`from_keys`; every field is named as its key."""

    prune: float | None = None
    prune_ratio: float | None = None
    prune_latency: float | None = None
    prune_steps: int | None = None
    prune_start: int | None = None
    prune_end: int | None = None
    prune_method: str = "l2"
    prune_round: int = 16
    prune_global: bool = False
    prune_max_ratio: float = 0.9
    prune_ignore: tuple = ()
    prune_layers: dict = field(default_factory=dict)
    prune_sparsity: float = 0.0
    prune_reg: float = 0.0
    prune_mode: str = "structured"
    prune_sensitivity: str | None = None
    prune_runtime: str = "onnxruntime"
    prune_threads: int | None = None
    prune_distill: bool = False

    @classmethod
    def from_keys(cls, keys: dict[str, Any] | None = None, mode: str = "train") -> PruneConfig:
        """Validate ``keys`` (CLI or Python) for ``mode`` (``train`` or ``prune``); PruneError on the first bad one."""
        keys = dict(keys or {})
        accepted = mode_keys(mode)
        for k in keys:
            if k not in accepted:
                raise PruneError(other_mode(k, accepted) or (
                    f"'{k}' is not a valid yolo-prune key; {suggest(k, accepted)}accepted: {', '.join(accepted)}"
                ))  # fmt: skip
        values = {k: KEYS[k].parse(k, keys.get(k, KEYS[k].default)) for k in KEYS}
        cfg = cls(**values)
        cfg._check_rules(mode)  # on what the user gave, before 2:4 fills in its amount
        if cfg.prune_mode == "2:4":  # 2 of every 4 weights, at once: there is no amount and no schedule
            for k in ("prune", "prune_ratio"):
                if values[k] not in (None, 0.5):
                    raise PruneError(f"{k}={values[k]} does not apply to prune_mode=2:4 (always 50%); accepted: "
                                     f"leave it out")  # fmt: skip
            if values["prune_steps"] not in (None, 1):
                raise PruneError("prune_steps must be 1 with prune_mode=2:4; accepted: prune_steps=1 or leave it out")
            if values["prune_ratio"] is None:
                values["prune"] = 0.5
            values["prune_steps"] = 1 if mode == "train" else None
            cfg = cls(**values)
        return cfg

    def _check_rules(self, mode: str) -> None:
        """The rules between plugin keys (each lives only here)."""
        given = [k for k in TARGETS if getattr(self, k) is not None]
        if len(given) > 1:
            raise PruneError(f"{' and '.join(given)} are exclusive; accepted: one of {', '.join(TARGETS)}")
        if self.prune_method == "sensitivity" and not self.prune_sensitivity:
            raise PruneError(
                "prune_method=sensitivity needs prune_sensitivity=<sensitivity.csv>; accepted: the CSV written by "
                "'yolo-prune sensitivity'"
            )
        if self.prune_latency is not None and self.prune_method == "sensitivity":
            raise PruneError(
                "prune_method=sensitivity allocates by a GFLOPs table, prune_latency by measured latency; accepted: "
                "one of them"
            )
        if self.prune_max_ratio != KEYS["prune_max_ratio"].default and not self.prune_global:
            raise PruneError(
                f"prune_max_ratio={self.prune_max_ratio:g} applies with prune_global=True (otherwise every layer "
                "loses the same share); accepted: add prune_global=True, or leave prune_max_ratio out"
            )
        if self.prune_latency is not None and self.prune_mode != "structured":
            raise PruneError(
                f"prune_latency needs prune_mode=structured (zeros do not run faster); got {self.prune_mode}"
            )
        if self.prune_reg and self.prune_mode != "structured":
            raise PruneError(f"prune_reg decays whole channel groups, which prune_mode={self.prune_mode} does not "
                             "remove; accepted: prune_mode=structured, or leave prune_reg out")  # fmt: skip
        if mode == "prune" and self.target is None and self.prune_ratio is None and not self.prune_layers \
                and self.prune_mode != "2:4":  # fmt: skip
            raise PruneError(
                "prune is required; accepted: prune=<fraction of GFLOPs to remove, 0-1>, prune_ratio=<0-1> or "
                "prune_latency=<fraction of the latency to remove, 0-1>"
            )

    def check_run(self, *, resume: Any = False, distill_model: Any = None, task: str | None = None) -> None:
        """The rules between plugin keys and the run's own (Ultralytics') settings, checked before anything is
        written. ``resume``: a resumed run keeps its checkpoint's schedule and teacher."""
        if not self.prune_distill or resume:
            return
        if distill_model:
            raise PruneError(
                "prune_distill=True and distill_model= both name a teacher; accepted: prune_distill=True (the model "
                "before its first prune step) or distill_model=<teacher.pt>"
            )
        if self.target is None:
            raise PruneError(
                "prune_distill=True distills from the model as it was before its first prune step, so it needs "
                "prune= or prune_latency=; accepted: add a target, or distill_model=<teacher.pt> to fine-tune with a "
                "teacher"
            )
        if task is not None and task not in HEAD_TASKS:
            raise PruneError(
                f"prune_distill=True needs a detection head ({', '.join(HEAD_TASKS)}; Ultralytics distills their neck "
                f"features); got task {task}"
            )

    @property
    def target(self) -> float | None:
        """What the schedule removes: the GFLOPs (or weights) fraction ``prune``, or the latency fraction."""
        return self.prune if self.prune is not None else self.prune_latency

    @property
    def structured(self) -> bool:
        """Whether channels are removed (``structured``) rather than weights zeroed in place."""
        return self.prune_mode == "structured"

    @property
    def engine_options(self) -> dict[str, Any]:
        """The keys the engine's planners take besides the target, criterion and rounding."""
        names = ("prune_ignore", "prune_layers", "prune_global", "prune_max_ratio", "prune_sensitivity")
        return {k: getattr(self, k) for k in names}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the checkpoint's ``prune_state["cfg"]``): loadable anywhere, with the keys' own names."""
        d = asdict(self)
        d["prune_ignore"] = list(self.prune_ignore)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneConfig:
        """The config a checkpoint's ``prune_state["cfg"]`` holds (no re-validation: it was valid when written)."""
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if "prune_ignore" in d:
            d["prune_ignore"] = tuple(d["prune_ignore"] or ())
        return cls(**d)


def markdown_reference() -> str:
    """The docs' key reference (docs/reference/keys.md, between its KEYS markers), from :data:`KEYS`."""
    out = ["| key | default | accepted | modes | meaning |", "|---|---|---|---|---|"]
    for k, key in KEYS.items():
        default = key.default_text or ("" if key.default is None else f"`{key.default}`")
        out.append(f"| `{k}` | {default} | {key.accepts.replace('|', '&#124;')} | {', '.join(key.modes)} | "
                   f"{key.help} |")  # fmt: skip
    for mode, keys in MODE_KEYS.items():
        out += ["", f"`yolo-prune {mode}` also takes:", "", "| key | default |", "|---|---|"]
        out += [f"| `{k}` | {'' if v is None else f'`{v}`'} |" for k, v in keys.items() if k not in KEYS]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown_reference())
