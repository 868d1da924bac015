"""``prune_latency`` in training: the run's latency table, the target checked up front, and each step's plan.

The table is built once per run (from the disk cache when the machine has timed these convs before) on rank 0, which
also decides whether the target is reachable: the other ranks get rank 0's answer, so all of them go on or stop
together. Step k of n leaves ``1 - F*k/n`` of the latency the run started with, as the table predicts it; the last
step is measured (exported and timed, interleaved, against the model the run started with) and re-aimed. A resumed
run no longer has that model, so its last step is timed against the model before the step, and the speed-up since the
start is taken against the latency measured when the run started.
"""

from __future__ import annotations

import copy

from ultralytics.utils import RANK

from ..cfg import PruneConfig, PruneError
from ..engine.graph import prepare_model
from ..engine.latency import LatencyTable, build_table, latency_line
from ..engine.runtime import Runtime, check_runtime, clock_name
from ..engine.targets import plan_for_latency
from .ddp import broadcast_from_rank0


class LatencyRun:
    """The latency side of one training run (the table lives in memory; it is cached on disk too)."""

    def __init__(self):
        self.table: LatencyTable | None = None
        self.table_done = 0  # steps done when the table was built (a resumed run times the pruned model)
        self.start_model = None  # the architecture the run started with (latency does not depend on the weights)

    @staticmethod
    def runtime(trainer, lat: dict) -> Runtime:
        """The runtime a latency schedule is measured on (torch: the device this rank trains on)."""
        device = check_runtime(lat["runtime"], str(trainer.device) if lat["runtime"] == "torch" else None)
        return Runtime(lat["runtime"], device, lat["threads"], 1, lat["imgsz"])

    def build(self, trainer, model, lat: dict, prune_round: int, done: int) -> LatencyTable:
        """The latency table of the model as this run found it (built once per run)."""
        if self.table is None:
            self.table = build_table(prepare_model(copy.deepcopy(model)), self.runtime(trainer, lat), prune_round)
            self.table_done = done  # step targets are scaled to the model this table timed (see plan)
        return self.table

    def start(self, trainer, model, cfg: PruneConfig) -> dict:
        """The state's ``latency`` record of a new run: table built, model measured, target checked on rank 0.

        Raises:
            PruneError: The target cannot be reached (on every rank, with rank 0's line).
        """
        if RANK not in {-1, 0}:
            lat = broadcast_from_rank0(None)
        else:
            try:
                lat = self._start_rank0(trainer, model, cfg)
            except PruneError as e:
                broadcast_from_rank0(str(e))
                raise
            broadcast_from_rank0(lat)
        if isinstance(lat, str):  # rank 0 refused the target: stop every rank with its line
            raise PruneError(lat)
        return lat

    def _start_rank0(self, trainer, model, cfg: PruneConfig) -> dict:
        lat = {"fraction": cfg.prune_latency, "runtime": cfg.prune_runtime, "threads": cfg.prune_threads,
               "imgsz": trainer.args.imgsz}  # fmt: skip
        table = self.build(trainer, model, lat, cfg.prune_round, 0)
        rt = self.runtime(trainer, lat)
        # base_ms compares only with a step timed on the same clock
        lat.update(base_ms=round(table.full_ms, 3), table=str(table.path), clock=clock_name(rt.device, rt.threads))
        net = prepare_model(copy.deepcopy(model))  # is the target reachable? (the trace costs about a second)
        options = {k: v for k, v in cfg.engine_options.items() if k != "prune_sensitivity"}
        plan_for_latency(  # l2: gradient criteria have no gradients yet (the ranking decides reach only with prune_global)
            net, lat["fraction"], rt, "l2", cfg.prune_round, table=table, measure=False,
            **options,
        )  # fmt: skip
        self.start_model = net.cpu().eval()  # the last step is timed against it (rank 0 times; model_runner moves it)
        return lat

    def plan(self, trainer, model, state: dict, k: int, n: int, options: dict):
        """Step ``k`` of ``n``: the plan that leaves ``1 - F*k/n`` of the starting latency; (plan, report)."""
        lat, cfg = state["latency"], state["cfg"]
        self.build(trainer, model, lat, cfg["prune_round"], state["done"])
        options = {key: v for key, v in options.items() if key != "prune_sensitivity"}
        # of the latency at the start; a resumed run's table timed the model after table_done steps
        f, d = lat["fraction"], self.table_done
        keep_ms = (1 - f * k / n) / (1 - f * d / n) * self.table.full_ms
        base_run = self.table.full_ms / (1 - f * d / n)
        reference = self.start_model  # None in a resumed run (timed against the model before the step)
        return plan_for_latency(
            model, lat["fraction"], self.runtime(trainer, lat), cfg["prune_method"], cfg["prune_round"],
            table=self.table, keep_ms=keep_ms, base_ms=base_run, measure=k == n, reference=reference, **options,
        )  # fmt: skip


def overall(lat: dict, report: dict) -> str:
    """The speed-up since the start: measured with the start model (a fresh run), or against its latency measured
    when the run started (a resumed one, whose last step was timed against the model before it)."""
    target = f"target {1 / (1 - lat['fraction']):.2f}x"
    if report.get("measured_against") == "start":
        return f"; against the model the run started with, timed together ({target})"
    if lat.get("clock", "wall") != report.get("clock", "wall"):  # a run started before timings read CPU time
        return f"; {target} (the start was timed on the {lat.get('clock', 'wall')} clock, so no speed-up since it)"
    return f"; since the start {lat['base_ms']:.2f} -> {report['measured_ms'][1]:.2f} ms " + (
        f"({lat['base_ms'] / report['measured_ms'][1]:.2f}x, {target}; the start timed when the run began)"
    )


def report_line(state: dict, report: dict) -> str:
    """The log line of a measured latency step: predicted and measured, and since the start."""
    return latency_line(report) + overall(state["latency"], report)
