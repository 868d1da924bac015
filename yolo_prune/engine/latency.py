"""Latency cost model: how long the model takes on the runtime it will run on, as a function of its widths.

GFLOPs do not translate into time evenly: ONNX Runtime realizes 0.92-0.99 of a GFLOPs cut on CPU, OpenVINO 0.82, and
PyTorch CUDA at batch 1 made a pruned model slower. So each conv the runtime executes is timed in isolation on that
runtime, at its real input shape, at every width a prune can give it (multiples of ``prune_round`` below its own), and
the whole model once; what the convs do not explain is the fixed cost the model keeps whatever its widths.

A conv's latency at (kept inputs, kept outputs) is taken as separable, ``L(ci, co) = L(ci, full) * L(full, co) /
L(full, full)``: two 1-D curves per conv instead of a grid, which keeps a yolo11n table under two minutes on 2 CPU
cores. The two halves of a split C2f/C2PSA ``cv1`` run as one folded conv, so they are timed as one.

The table is cached on disk under the dataset cache folder, keyed by runtime, device, threads, batch, imgsz and the
model's conv shapes, so a second run on the same machine reuses it; a new model's table takes the conv shapes it shares
with other models' tables on the same runtime and machine from them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ultralytics.utils import LOGGER, TQDM

from ..checkpoint import atomic_write_bytes
from ..datasets import cache_dir
from ..support import require
from .blocks import C2fSplit, C2PSASplit
from .backends import BACKENDS
from .convs import call_overhead_ms, time_conv, time_convs
from .runtime import Runtime, cpu_timed, measure_models, model_runners

LOAD_SAMPLE = 6  # convs re-timed when a table comes from the cache, to put it on today's load
LOAD_MIN_OVERHEADS = 3  # ... each taking at least this many per-call overheads (below, the ratio is the overhead's)
LOAD_CLAMP = 3.0  # the load scale is kept within 1/3-3x
TABLE_VERSION = 4  # 2: MNN low precision, LiteRT grouped layout, ONNX input kept, torch CPU threads applied,
# ExecuTorch pool always sized (tables of 1 are re-timed); 3: thread CPU time at one thread (runtime.cpu_timed);
# 4: denormals flushed while timing (runtime.flushed)


def latency_cache_dir() -> Path:
    """``<dataset cache>/../latency``: beside the built-in datasets (``$YOLO_PRUNE_CACHE`` or ``~/.cache/yolo-prune``)."""
    return cache_dir().parent / "latency"


# --- the table -------------------------------------------------------------------------------------------------------
@dataclass
class ConvUnit:
    """One conv the runtime executes: a model conv, or a split block's two ``cv1`` halves folded into one."""

    convs: list[nn.Conv2d]
    cin: int
    cout: int
    k: int
    s: int
    p: int
    g: int
    d: int
    h: int
    w: int
    act: bool

    @property
    def depthwise(self) -> bool:
        return self.g > 1 and self.g == self.cin == self.cout

    def sig(self, cin: int, cout: int, batch: int) -> tuple:
        g = cin if self.depthwise else self.g
        cout = cin if self.depthwise else cout
        return (cin, cout, self.k, self.s, self.p, g, self.d, self.h, self.w, self.act, batch)


def conv_units(model: nn.Module, imgsz: int) -> list[ConvUnit]:
    """The convs of a prepared (split) model as the runtime runs them, with their input sizes at ``imgsz``."""
    # which convs run as deployed, at which input size: an eval forward of a copy whose YOLO26 head keeps only the
    # branch the default export keeps (Detect.fuse drops the other; an eval forward would run both)
    ran: dict[str, tuple[int, int]] = {}
    probe = copy.deepcopy(model).eval()
    for m in probe.modules():
        if getattr(m, "one2one_cv2", None) is not None and hasattr(m, "fuse"):
            m.end2end = False  # Ultralytics' exporter: end2end only with nms=False
            m.fuse()
    names = {m: n for n, m in probe.named_modules() if isinstance(m, nn.Conv2d)}
    hooks = [m.register_forward_hook(lambda m, i, o: ran.__setitem__(names[m], tuple(i[0].shape[-2:]))) for m in names]
    p = next(probe.parameters())
    try:
        with torch.no_grad():
            probe(torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    own = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    hw = {m: ran[own[m]] for m in convs if own[m] in ran}
    act = {id(m.conv): not isinstance(getattr(m, "act", nn.Identity()), nn.Identity) for m in model.modules()
           if isinstance(getattr(m, "conv", None), nn.Conv2d)}  # fmt: skip
    pairs = {}
    for m in model.modules():
        if isinstance(m, (C2fSplit, C2PSASplit)):
            pairs[m.cv0.conv] = m.cv1.conv
    skip = set(pairs.values())
    units = []
    for m in convs:
        if m in skip or m not in hw:
            continue
        members = [m, pairs[m]] if m in pairs else [m]
        units.append(
            ConvUnit(
                convs=members,
                cin=m.in_channels,
                cout=sum(c.out_channels for c in members),
                k=m.kernel_size[0],
                s=m.stride[0],
                p=m.padding[0] if isinstance(m.padding, tuple) else 0,
                g=m.groups,
                d=m.dilation[0],
                h=hw[m][0],
                w=hw[m][1],
                act=act.get(id(m), False),
            )
        )
    return units


def widths(full: int, step: int) -> list[int]:
    """Every width a prune can leave: ``full``, then ``full - k * step`` down to ``step``."""
    return sorted({full - k * step for k in range((full - 1) // step + 1) if full - k * step >= min(step, full)})


def model_signature(units: list[ConvUnit]) -> str:
    """A short hash of the conv shapes: a different model (or a pruned one) gets its own table."""
    shapes = [(u.cin, u.cout, u.k, u.s, u.p, u.g, u.d, u.h, u.w, u.act) for u in units]
    return hashlib.sha1(json.dumps(shapes).encode()).hexdigest()[:16]


def machine_signature(rt: Runtime) -> str:
    """A short hash of what timings depend on besides the model: this machine, its CPU/GPU and the runtime's version."""
    import platform

    cpu = platform.processor()
    try:
        cpu = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [platform.node(), cpu, torch.__version__, TABLE_VERSION]
    if rt.name in BACKENDS:
        parts.append(BACKENDS[rt.name].version)
    elif rt.device != "cpu":
        parts.append(torch.cuda.get_device_name(torch.device(rt.device if ":" in rt.device else f"cuda:{rt.device}")))
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:8]


class LatencyTable:
    """Per-conv latency curves (ms) on one runtime, plus the model's fixed cost; cached as JSON."""

    def __init__(self, units: list[ConvUnit], rt: Runtime, step: int):
        self.units, self.rt, self.step = units, rt, step
        self.times: dict[tuple, float] = {}  # signature -> ms
        self.fixed_ms = 0.0
        self.full_ms = 0.0
        self.timed = 0  # timings made by this object (0 when everything came from the cache)
        self.overhead_ms = 0.0  # per-call cost of the runtime, taken off every isolated conv time
        self.scale = 1.0  # conv times at the whole-model timing over the table's (see _model_at_load)
        self.load_sampled = 0  # convs re-timed for that scale (0: not measured, 1.0 taken)

    @property
    def path(self) -> Path:
        key = {**self.rt.key, "imgsz": self.rt.imgsz, "step": self.step, "model": model_signature(self.units)}
        key["machine"] = machine_signature(self.rt)
        name = "-".join(str(v) for v in key.values()).replace("/", "_").replace(":", "_")
        return latency_cache_dir() / f"{name}.json"

    def needed(self) -> list[tuple]:
        """Signatures the curves need: every output width at full input, every input width at full output."""
        b = self.rt.batch
        out = []
        for u in self.units:
            if u.depthwise:
                out += [u.sig(c, c, b) for c in widths(u.cin, self.step)]
            else:
                out += [u.sig(u.cin, c, b) for c in widths(u.cout, self.step)]
                out += [u.sig(c, u.cout, b) for c in widths(u.cin, self.step)]
        return list(dict.fromkeys(out))

    def build(self, full_model_ms: Callable[[], float]) -> LatencyTable:
        """Load the cached table, or time what it lacks (TQDM progress) and the whole model, and save it."""
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("version") == TABLE_VERSION:
                self.times = {tuple(json.loads(k)): v for k, v in saved["times"].items()}
        todo = [s for s in self.needed() if s not in self.times]
        if todo:  # a conv shape another model's table on this runtime and machine timed is the same conv
            self._borrow(todo)
            todo = [s for s in todo if s not in self.times]
        t0 = time.perf_counter()
        self.overhead_ms = call_overhead_ms(self.rt)
        cached = len(todo) < len(self.needed())
        if cached:  # some came from the cache: the shapes timed now are kept on its basis
            self.scale = self._load_ratio()
        desc = f"yolo-prune: latency table ({self.rt.name}, {len(todo)} conv shapes)"
        for sig, ms in TQDM(time_convs(todo, self.rt), total=len(todo), desc=desc, disable=not todo):
            self.times[sig] = self._kept(ms)
        self.timed = len(todo)
        # the whole model is measured on every run (one export): the fixed cost follows today's machine load
        self.full_ms = self._model_at_load(full_model_ms)
        convs = sum(self.unit_ms(u, u.cin, u.cout) for u in self.units)
        self.fixed_ms = max(self.full_ms - convs, 0.0)  # isolated convs can sum to more than the model (overheads)
        if todo:
            data = {"version": TABLE_VERSION, **self.rt.key, "imgsz": self.rt.imgsz, "step": self.step}
            data["shared"] = self._shared_key()
            times = {json.dumps(list(k)): v for k, v in self.times.items()}
            data.update(times=times, fixed_ms=self.fixed_ms, full_ms=self.full_ms, scale=self.scale)  # times: cached basis
            atomic_write_bytes(self.path, json.dumps(data).encode())
        clock = "thread CPU time; " if cpu_timed(self.rt.device, self.rt.threads) else ""
        LOGGER.info(
            f"yolo-prune: latency table of {len(self.units)} convs ({self.timed} shapes timed, "
            f"{len(self.needed()) - self.timed} from {latency_cache_dir()}) in {time.perf_counter() - t0:.1f}s: model "
            f"{self.full_ms:.2f} ms, convs {convs:.2f} ms, fixed {self.fixed_ms:.2f} ms ({clock}call overhead "
            f"{self.overhead_ms * 1000:.0f} us taken off each conv"
            + (f"; conv times x{self.scale:.2f} for the load of the model's timing, from {self.load_sampled} convs "
               "re-timed)" if self.load_sampled else
               "; cached times read as they are: no conv well above the call overhead to re-time)" if cached else ")")  # fmt: skip
        )
        return self

    def _shared_key(self) -> dict:
        return {**self.rt.key, "machine": machine_signature(self.rt)}

    def _borrow(self, todo: list[tuple]) -> None:
        """Take the times of ``todo`` signatures from the cached tables of other models timed on the same runtime,
        threads, batch and machine (a signature holds the conv's whole shape, its input size included)."""
        want, key = set(todo), self._shared_key()
        for f in sorted(latency_cache_dir().glob("*.json")):
            try:
                saved = json.loads(f.read_text())
            except (OSError, ValueError):
                continue  # another process's table half-read, or not a table: time those shapes instead
            if saved.get("version") != TABLE_VERSION or saved.get("shared") != key:
                continue
            for k, v in saved["times"].items():
                if (sig := tuple(json.loads(k))) in want and sig not in self.times:
                    self.times[sig] = v

    def _load_ratio(self) -> float:
        """Now's time over the table's time of the model's largest convs at full width, re-timed now (median).

        A cached table was timed under another load than today's whole-model measurement; without this the
        difference reads as fixed cost (a yolo26s once came out at 31 of its 168 ms fixed, so a reachable target was
        refused), and the conv share of the model, hence what a prune can give, moves with the load. Only convs
        well above the per-call overhead say anything about the load, and the ratio is kept within 1/3-3x; with no
        such conv in the table it is 1.
        """
        full = dict.fromkeys(u.sig(u.cin, u.cout, self.rt.batch) for u in self.units if not u.depthwise)
        usable = [s for s in full if self.times.get(s, 0.0) > LOAD_MIN_OVERHEADS * self.overhead_ms]
        sample = sorted(usable, key=lambda s: -self.times[s])[:LOAD_SAMPLE]
        if not sample:
            return 1.0
        now = dict(time_convs(sample, self.rt))
        self.load_sampled = len(sample)
        ratio = statistics.median((now[s] - self.overhead_ms) / (self.times[s] - self.overhead_ms) for s in sample)
        return min(max(ratio, 1 / LOAD_CLAMP), LOAD_CLAMP)

    def _model_at_load(self, full_model_ms: Callable[[], float]) -> float:
        """The whole model's ms, with the scale put on the load it ran at: the same convs re-timed right before and
        right after it, the scale the geometric mean of the two.

        The load of a shared machine moves within seconds; sampled once, before the new shapes were timed and the
        model exported, the scale could be a minute older than the model's timing. Only a table that came from the
        cache is re-scaled: one timed just now keeps scale 1 (its times are this load's; re-timed, the small convs
        of a fresh torch table at 96 px ran at 0.63 of their first timing, and a reachable target was refused)."""
        if not self.load_sampled:  # timed just now, or no cached conv well above the call overhead
            return full_model_ms()
        before = self._load_ratio()
        full = full_model_ms()
        after = self._load_ratio()
        self.scale = min(max(math.sqrt(before * after), 1 / LOAD_CLAMP), LOAD_CLAMP)
        return full

    def _kept(self, ms: float) -> float:
        """A time taken today, as the table keeps it: on the cached times' load (``scale`` 1 for a new table)."""
        return self.overhead_ms + (ms - self.overhead_ms) / self.scale

    def _t(self, u: ConvUnit, cin: int, cout: int) -> float:
        sig = u.sig(cin, cout, self.rt.batch)
        if sig not in self.times:  # a width off the prune_round grid (e.g. an odd original width): time it now
            self.times[sig] = self._kept(time_conv(sig, self.rt))
        return max(self.times[sig] - self.overhead_ms, 1e-6) * self.scale

    def unit_ms(self, u: ConvUnit, cin: int, cout: int) -> float:
        """Latency of ``u`` with ``cin`` inputs and ``cout`` outputs kept (separable in the two)."""
        if u.depthwise:
            return self._t(u, cin, cin)
        if cin == u.cin or cout == u.cout:
            return self._t(u, cin, cout)
        full = self._t(u, u.cin, u.cout)
        return self._t(u, u.cin, cout) * self._t(u, cin, u.cout) / max(full, 1e-9)


def build_table(model: nn.Module, rt: Runtime, round_to: int) -> LatencyTable:
    """The latency table of ``model`` (prepared) on ``rt``, from the cache or timed now.

    Raises:
        PruneError: A YOLO26 model on an Ultralytics release whose export keeps another head than it is timed with.
    """
    if any(getattr(m, "one2one_cv2", None) is not None for m in model.modules()):
        require("yolo26 export", "prune_latency on a YOLO26 model")
    table = LatencyTable(conv_units(model, rt.imgsz), rt, round_to)
    runners = model_runners({"model": model}, rt)  # exported first: the load samples bracket its timing only
    return table.build(lambda: measure_models({"model": model}, rt, runners=runners)["model"])


def latency_line(info: dict) -> str:
    """One log line: predicted and measured latency before and after, and the measured speed-up."""
    pb, pp = info["predicted_ms"]
    line = f"yolo-prune: {info['runtime']} latency at imgsz {info['imgsz']}"
    if info.get("threads"):
        line += f", {info['threads']} thread{'s' if info['threads'] > 1 else ''}"
    if info.get("clock") == "cpu":
        line += " (thread CPU time)"
    if "measured_ms" in info:
        mb, mp = info["measured_ms"]
        line += f": measured {mb:.2f} -> {mp:.2f} ms ({info['measured_speedup']:.2f}x"
        spread = info.get("measured_speedups") or []
        if len(spread) > 1:
            line += f", median of {len(spread)} timings, {min(spread):.2f}-{max(spread):.2f}x"
        line += ")"
    return line + f", predicted {pb:.2f} -> {pp:.2f} ms ({pb / pp:.2f}x)"
