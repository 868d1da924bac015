"""Cost models: what a model costs when each coupled group loses some channels.

The allocators (:mod:`yolo_prune.allocate`) search over per-group removals and need the cost of many candidates, so a
cost model is analytic: measured once on the unpruned model, then evaluated without copying or re-tracing. Every cost
model answers one question, :meth:`CostModel.estimate`, in its own units; allocators only ever compare a candidate to
:attr:`CostModel.base`, so the units never matter.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from .graph import TRACE_IMGSZ
from .latency import LatencyTable, conv_units


class CostModel:
    """Cost of a model as a function of the channels removed per coupled group.

    Args:
        n_groups: Number of coupled groups; ``removed`` lists passed to :meth:`estimate` have this length.
    """

    def __init__(self, n_groups: int):
        self.n_groups = n_groups

    def estimate(self, removed: list[int]) -> float:
        """The model's cost (arbitrary units) if group ``g`` loses ``removed[g]`` channels."""
        raise NotImplementedError

    @property
    def base(self) -> float:
        """The cost with nothing removed.

        Evaluated on each call, not cached: estimates read the layers' current widths, and a cached value would go
        stale if the model were pruned in between.
        """
        return self.estimate([0] * self.n_groups)


class FlopsCost(CostModel):
    """Conv + linear FLOPs, from each layer's output size measured once and the channels each group takes from it.

    Args:
        model: The traced model (unpruned; one eval forward at ``imgsz`` measures every layer's output size).
        graph: The model's torch-pruning DependencyGraph, to tell output-channel from input-channel dependencies.
        groups: The coupled torch-pruning groups, in the order ``removed`` lists use.
        imgsz: Square input size of the measuring forward (the trace size by default, which keeps it cheap).
    """

    def __init__(
        self, model: nn.Module, graph: tp.DependencyGraph, groups: Sequence[tp.Group], imgsz: int = TRACE_IMGSZ
    ):
        super().__init__(len(groups))
        hw: dict[nn.Module, int] = {}
        hooks = [
            m.register_forward_hook(lambda m, i, o: hw.__setitem__(m, o.shape[-1] * o.shape[-2] if o.ndim == 4 else 1))
            for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        p = next(model.parameters())
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype))
        model.train(was_training)
        for h in hooks:
            h.remove()
        touched = []  # per group: [(layer, "out"|"in")]
        for group in groups:
            layers = []
            for dep, _ in group:
                m = dep.target.module
                if m in hw:
                    layers.append((m, "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"))
            touched.append(layers)
        self.hw = hw  # per conv/linear layer: output pixels (1 for linear)
        self.touched = touched

    def estimate(self, removed: list[int]) -> float:
        """Conv + linear FLOPs (arbitrary units) if group ``g`` loses ``removed[g]`` channels."""
        d_out: dict[nn.Module, int] = {}
        d_in: dict[nn.Module, int] = {}
        for n, layers in zip(removed, self.touched):
            for m, kind in layers:
                d = d_out if kind == "out" else d_in
                d[m] = d.get(m, 0) + n
        total = 0.0
        for m, hw in self.hw.items():
            if isinstance(m, nn.Linear):
                total += (m.in_features - d_in.get(m, 0)) * (m.out_features - d_out.get(m, 0))
                continue
            k = m.kernel_size[0] * m.kernel_size[1]
            if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise: in and out move together
                total += k * (m.out_channels - max(d_out.get(m, 0), d_in.get(m, 0))) * hw
            else:
                cin = (m.in_channels - d_in.get(m, 0)) / m.groups
                total += k * cin * (m.out_channels - d_out.get(m, 0)) * hw
        return total


class LatencyCost(CostModel):
    """Predicted model latency (ms) when group ``g`` of a :class:`ChannelPruner` loses ``removed[g]`` channels."""

    def __init__(self, pruner, table: LatencyTable):
        super().__init__(len(pruner.groups))
        self.table = table
        # the pruner's model may be the table's model after earlier steps: same convs in the same order, narrower
        self.now = conv_units(pruner.model, table.rt.imgsz)
        if [len(u.convs) for u in self.now] != [len(u.convs) for u in table.units]:
            raise RuntimeError("yolo-prune: the latency table belongs to a model of another structure")
        unit_of = {c: i for i, u in enumerate(self.now) for c in u.convs}
        self.touched: list[list[tuple[int, str]]] = []  # per group: (unit index, "out"|"in")
        for _, _, group, _ in pruner.groups:
            seen = []
            for dep, _ in group:
                m = dep.target.module
                if m in unit_of:
                    kind = "out" if pruner.graph.is_out_channel_pruning_fn(dep.handler) else "in"
                    if (unit_of[m], kind) not in seen:
                        seen.append((unit_of[m], kind))
            self.touched.append(seen)
        self.by_unit: list[list[tuple[int, str]]] = [[] for _ in self.now]
        for g, layers in enumerate(self.touched):
            for i, kind in layers:
                self.by_unit[i].append((g, kind))

    def _unit_ms(self, i: int, removed: list[int], extra: dict[int, int] | None = None) -> float:
        """Latency of unit ``i`` when each group g has lost ``removed[g]`` (+ ``extra[g]``) channels."""
        u, now = self.table.units[i], self.now[i]
        d = {"out": 0, "in": 0}
        for g, kind in self.by_unit[i]:
            d[kind] += removed[g] + (extra or {}).get(g, 0)
        if u.depthwise:
            c = now.cin - max(d.values())
            return self.table.unit_ms(u, c, c)
        return self.table.unit_ms(u, now.cin - d["in"], now.cout - d["out"])

    def estimate(self, removed: list[int]) -> float:
        """Predicted milliseconds: the fixed cost plus every conv at its kept widths."""
        return self.table.fixed_ms + sum(self._unit_ms(i, removed) for i in range(len(self.now)))

    def saved_by(self, removed: list[int], move: tuple[int, ...], n: int) -> float:
        """Predicted milliseconds saved if every group in ``move`` loses ``n`` more channels (touched convs only)."""
        extra = dict.fromkeys(move, n)
        units = {i for g in move for i, _ in self.touched[g]}
        return sum(self._unit_ms(i, removed) - self._unit_ms(i, removed, extra) for i in units)
