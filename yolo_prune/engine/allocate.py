"""Allocation: how many channels each coupled group loses, for a ratio or a target on a cost model.

Every allocator here takes the :class:`~yolo_prune.engine.pruner.ChannelPruner` (``pruner``), returns ``removed``
(channels removed per group, in the pruner's group order) and reads only the
pruner's bookkeeping: ``groups`` (with their importance scores, for global ranking), ``round_to``, the fixed
``layer_ratios`` (``fixed``), the split-half ``pairs`` and ``lock``. Which channels go inside a group is the pruner's
business (:meth:`~yolo_prune.engine.pruner.ChannelPruner.plan_removed`); what a candidate costs is the cost model's
(:mod:`yolo_prune.engine.costs`).
"""

from __future__ import annotations

import csv
import heapq
import math
from pathlib import Path

import numpy as np
import torch.nn as nn
from ultralytics.utils import LOGGER

from ..cfg import PruneError
from .costs import CostModel, LatencyCost
from .graph import match_layer
from .plan import kept_channels


def movable_units(pruner) -> list[tuple[int, ...]]:
    """What an allocator may move, one rounding unit at a time: each unpaired group alone, and both halves of a split
    block together (a pair with an unprunable half, or with a fixed ``layer_ratios`` half, never moves)."""
    paired = {g for pair in pruner.pairs for g in pair}
    units = [(g,) for g in range(len(pruner.groups)) if g not in pruner.fixed and g not in paired]
    return units + [p for p in pruner.pairs if None not in p and not any(g in pruner.fixed for g in p)]


def removed_uniform(pruner, ratio: float) -> list[int]:
    """Channels to remove per group at one per-layer channel ``ratio`` (fixed ratios kept, split halves locked)."""
    return pruner.lock(
        [
            pruner.fixed.get(g, len(order) - kept_channels(len(order), ratio, pruner.round_to))
            for g, (_, order, *_) in enumerate(pruner.groups)
        ]
    )


def removed_for_cost(pruner, cost: CostModel, fraction: float, at_most: bool = False) -> list[int]:
    """Channels to remove per group so the estimated cost fraction lands closest to ``fraction`` of ``cost.base``
    (``at_most``: at or below it, where the model's widths allow; a latency target is a bound).

    torch-pruning only takes channel ratios, and GFLOPs fall roughly with the square of the kept width. A uniform
    ratio is searched first on the analytic estimate (no copy, no re-trace); with ``round_to`` it moves in coarse
    steps on small models, so the remaining gap is closed one rounding unit at a time, always in the group that is
    currently pruned least, which keeps the allocation as close to uniform as the rounding allows. Groups with a
    fixed ratio (``layer_ratios``) keep it; the two halves of a split block move together, one unit each.
    """
    base = cost.base
    frac = lambda removed: cost.estimate(removed) / base  # noqa: E731
    lo, hi = 0.0, 0.99
    for _ in range(30):  # the fraction is a non-increasing step function of the ratio
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if frac(removed_uniform(pruner, mid)) > fraction else (lo, mid)
    removed = removed_uniform(pruner, lo)
    sizes = [len(order) for _, order, *_ in pruner.groups]
    current = frac(removed)
    units = movable_units(pruner)
    while current > fraction:
        room = [u for u in units if all(sizes[g] - removed[g] - pruner.round_to >= pruner.round_to for g in u)]
        if not room:
            break
        # the unit that leaves its group least pruned: by the fraction before the step, a 64-channel stem at half
        # went to a quarter (16 kept at the highest resolution) while 256-channel layers stood at 62.5%
        unit = min(room, key=lambda u: ((removed[u[0]] + pruner.round_to) / sizes[u[0]], -sizes[u[0]]))
        trial = removed.copy()
        for g in unit:
            trial[g] += pruner.round_to
        new = frac(trial)
        if not at_most and new <= fraction and fraction - new > current - fraction:
            break  # one more unit overshoots by more than it closes
        removed, current = trial, new
    return removed


def removed_global(
    pruner, cost: CostModel, ratio: float | None = None, fraction: float | None = None
) -> list[int]:
    """Channels to remove per group, ranked across all groups (``prune_global``).

    Channels go in rounding units, least important unit first over the whole model (a heap of each unit's next step,
    scored by the mean importance of the channels it removes), until ``ratio`` of all channels or the cost
    ``fraction`` is reached. A split block's two halves are one unit, so the block keeps equal halves and folds back
    to Ultralytics' class (a checkpoint plain ``ultralytics`` loads); a block with a half that cannot be pruned is
    left whole (unless ``prune_layers`` fixed its other half: see ``ChannelPruner._split_pairs``). No group loses
    more than ``max_ratio`` of its channels or keeps fewer than ``round_to``.
    torch-pruning's ``global_pruning`` works on ratios only and has no rounding to multiples, hence this loop.
    """
    sizes = [len(order) for _, order, *_ in pruner.groups]
    removed = [pruner.fixed.get(g, 0) for g in range(len(sizes))]
    r = pruner.round_to
    units = movable_units(pruner)

    def next_level(g: int) -> int | None:
        """Removed count after group g's next unit, keeping the kept count a multiple of round_to."""
        size, n = sizes[g], removed[g]
        kept = (size - n - 1) // r * r if (size - n) % r == 0 else (size - n) // r * r
        keep_min = max(r, math.ceil((1 - pruner.max_ratio) * size / r) * r)
        return size - kept if size > r and kept >= keep_min else None

    heap: list[tuple[float, tuple[int, ...], list[int]]] = []

    def push(unit: tuple[int, ...]) -> None:
        """Queue the unit's next step, scored by the mean importance of the channels it would remove."""
        levels = [next_level(g) for g in unit]
        if None not in levels:
            lost = sum(sum(pruner.groups[g][3][removed[g] : lvl]) for g, lvl in zip(unit, levels))
            heapq.heappush(heap, (lost / sum(lvl - removed[g] for g, lvl in zip(unit, levels)), unit, levels))

    for unit in units:
        push(unit)
    base = cost.base
    target_channels = ratio * sum(sizes) if ratio is not None else None
    while heap:
        if target_channels is not None and sum(removed) >= target_channels:
            break
        if fraction is not None and cost.estimate(removed) / base <= fraction:
            break
        _, unit, levels = heapq.heappop(heap)
        for g, lvl in zip(unit, levels):
            removed[g] = lvl
        push(unit)
    return removed


def layer_plan(pruner, layer: int, ratio: float) -> list[int]:
    """Channels removed per group when only ``layer`` is pruned, at channel ratio ``ratio``."""
    return [
        len(order) - kept_channels(len(order), ratio, pruner.round_to) if match_layer(name, layer) else 0
        for name, order, *_ in pruner.groups
    ]


def read_table(path: str | Path) -> dict[int, dict[float, float]]:
    """{layer: {ratio: mAP50-95 drop}} from a sensitivity.csv."""
    path = Path(path)
    try:
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if r["layer"] != "none"]
        table: dict[int, dict[float, float]] = {}
        for r in rows:
            table.setdefault(int(r["layer"]), {})[float(r["ratio"])] = float(r["drop"])
    except (OSError, KeyError, ValueError) as e:
        raise PruneError(f"prune_sensitivity={str(path)!r} is not a sensitivity.csv ({type(e).__name__})") from None
    return table


def check_table(path: str | Path, model) -> None:
    """Refuse a sensitivity.csv made on another model: its baseline row records the parameters of the model it was
    made on, and its layers must be layers of this one.

    Raises:
        PruneError: Naming the figure that differs.
    """
    path = Path(path)
    try:
        with path.open() as f:
            base = next(r for r in csv.DictReader(f) if r["layer"] == "none")
        params = int(float(base["params"]))
    except (OSError, KeyError, ValueError, StopIteration) as e:
        raise PruneError(f"prune_sensitivity={str(path)!r} is not a sensitivity.csv ({type(e).__name__})") from None
    layers = sorted(read_table(path))
    if base.get("body"):  # the widths of every layer but the class outputs: the same model on any class count
        same, what = base["body"] == body_signature(model), "layer widths"
    else:  # a table written before it recorded widths
        own = sum(p.numel() for p in model.parameters())
        same, what = params == own, f"{params:,} parameters, this one has {own:,}"
    if not same or (layers and layers[-1] >= len(model.model)):
        raise PruneError(
            f"prune_sensitivity={str(path)!r} was made on a model with other {what}; accepted: a table made by "
            f"'yolo-prune sensitivity' on this model"
        )


def body_signature(model) -> str:
    """A short hash of the output channels per layer of the backbone and neck (every layer but the head, whose class
    branch widths follow the class count), with a split block's two halves counted as the one conv they fold to."""
    import hashlib

    head = str(len(model.model) - 1)
    widths: dict[str, int] = {}
    for name, m in model.named_modules():
        layer = name.split(".")[1] if name.startswith("model.") else head
        if isinstance(m, nn.Conv2d) and layer != head:
            widths[layer] = widths.get(layer, 0) + m.out_channels
    return hashlib.sha1(str(sorted(widths.items())).encode()).hexdigest()[:12]


def removed_for_target(
    pruner, path: str | Path, flops_fraction: float, cost: CostModel | None = None
) -> list[int]:
    """Per-group removals that reach ``flops_fraction`` of the GFLOPs at the least summed mAP drop.

    Greedy on the table: from no pruning, repeatedly move the layer whose next ratio costs the least drop per unit of
    GFLOPs saved, until the analytic estimate reaches the target. Layers missing from the table stay intact.
    ``cost`` defaults to the pruner's FLOPs model; any cost model can stand in for GFLOPs.
    """
    cost = pruner.flops_cost if cost is None else cost
    table = {k: v for k, v in read_table(path).items() if k in pruner.layer_keys()}
    if not table:
        raise PruneError(
            f"prune_sensitivity={str(path)!r} has no layer of this model; run 'yolo-prune sensitivity' on it"
        )
    base = cost.base
    level = {k: 0.0 for k in table}
    drop = {k: 0.0 for k in table}

    def removed_at(levels: dict[int, float]) -> list[int]:
        out = [0] * len(pruner.groups)
        for layer, ratio in levels.items():
            if ratio > 0:
                out = [max(a, b) for a, b in zip(out, layer_plan(pruner, layer, ratio))]
        return pruner.lock(out)  # as plan_removed will: split halves equal, so the estimate matches the plan

    current = cost.estimate(removed_at(level)) / base
    while current > flops_fraction:
        best = None
        for layer, ratios in table.items():
            nxt = [r for r in sorted(ratios) if r > level[layer]]
            if not nxt:
                continue
            r = nxt[0]
            trial = {**level, layer: r}
            frac = cost.estimate(removed_at(trial)) / base
            saved = current - frac
            if saved <= 0:
                level[layer] = r  # no GFLOPs at this ratio (rounding): skip over it
                continue
            cost_per_saved = (max(ratios[r], 0.0) - drop[layer] + 1e-4) / saved
            if best is None or cost_per_saved < best[0]:
                best = (cost_per_saved, layer, r, frac)
        if best is None:
            LOGGER.warning(f"yolo-prune: the sensitivity table's largest ratios reach {current:.1%} of the GFLOPs only")
            break
        _, layer, r, current = best
        level[layer], drop[layer] = r, max(table[layer][r], 0.0)
    LOGGER.info(f"yolo-prune: sensitivity ratios { ({k: v for k, v in level.items() if v}) }")
    return removed_at(level)


def removed_for_latency(
    pruner, cost: LatencyCost, target_ms: float, max_ratio: float = 0.9
) -> list[int]:
    """Channels to remove per group so the predicted latency reaches ``target_ms``, least importance lost per
    millisecond saved first.

    Moves are one ``prune_round`` unit of a group (both halves of a split block together); a move's importance is the
    share of its group's total importance it removes, its gain the predicted milliseconds it saves. A move that saves
    nothing (a width the runtime is no faster at) is never taken on its own: the next unit is looked at with it, so a
    slow width is stepped over, and a group whose latency does not fall at all is left alone. No group loses more than
    ``max_ratio`` of its channels or keeps fewer than ``prune_round``.
    """
    r = pruner.round_to
    sizes = [len(order) for _, order, *_ in pruner.groups]
    totals = [max(sum(scores), 1e-12) for *_, scores in pruner.groups]
    removed = [pruner.fixed.get(g, 0) for g in range(len(sizes))]
    moves = movable_units(pruner)
    floor = [max(r, int(np.ceil((1 - max_ratio) * s / r)) * r) if s > r else s for s in sizes]
    current = cost.estimate(removed)
    while current > target_ms:
        best = None
        for move in moves:
            for units in (1, 2):  # look one unit further when the next alone saves nothing
                n = units * r
                if any(sizes[g] - removed[g] - n < floor[g] for g in move):
                    break
                saved = cost.saved_by(removed, move, n)
                if saved > 1e-6:
                    lost = sum(sum(pruner.groups[g][3][removed[g] : removed[g] + n]) / totals[g] for g in move)
                    if best is None or lost / saved < best[0]:
                        best = (lost / saved, move, n, saved)
                    break
        if best is None:
            break  # nothing left that makes it faster: the caller reports the best reachable latency
        _, move, n, saved = best
        for g in move:
            removed[g] += n
        current -= saved
    return removed
