"""Ultralytics trainer callbacks that prune between epochs while training fine-tunes what remains.

Written like ``ultralytics/utils/callbacks/*.py``: event handlers and a ``callbacks`` dict, with the settings held by an
instance instead of module globals so several trainers can run with different settings. The pruning state (schedule,
steps done, history) lives on the model as ``prune_state``, so it travels inside every checkpoint: ``resume=True``
continues the schedule with no plugin keys, and plugin keys never touch ``trainer.args``.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from .blocks import needs_yolo_prune
from .cfg import PruneError, check_prune_args
from .distill import (
    check_projectors,
    compile_off,
    hooks_off,
    is_distilling,
    refresh_teacher,
    set_weight,
    start_self_distillation,
    student_of,
)
from .engine import model_info, options_from_cfg, plan_for_latency, plan_for_target
from .graph import check_supported, ignored_modules, prepare_model
from .importance import GRAD_BATCHES, GRADIENT_METHODS, accumulate_gradients
from .latency import Runtime, build_table, check_runtime, latency_line
from .plan import check_forward
from .schedule import check_patience, make_schedule, warn_if_missed
from .sparsity import BNSparsity, penalised_norms
from .trainer import (
    PruneTrainerMixin,
    apply_step,
    broadcast_from_rank0,
    broadcast_plan,
    check_internals,
    rebuild_optimizer,
    renew_ema,
    rewrap_ddp,
    save_after_step,
    trainer_batches,
    trainer_loss,
)
from .unstructured import MaskKeeper, apply_masks, masks_from_zeros, sparsify, sparsity

SCHEDULE_DEFAULTS: dict[str, Any] = {"prune_steps": None, "prune_start": None, "prune_end": None}
TRAIN_DEFAULTS: dict[str, Any] = {**SCHEDULE_DEFAULTS, "prune_distill": False}  # training-only keys
STATE_VERSION = 1  # of ``prune_state``; version 0 (no "version" key) is read with the defaults it predates
FLOPS_IMGSZ = 640  # GFLOPs are reported at 640 like Ultralytics' model info; the pruned fraction barely depends on it
DISTILL_BOTH = (
    "prune_distill=True and distill_model= both name a teacher; accepted: prune_distill=True (the model before its "
    "first prune step) or distill_model=<teacher.pt>"
)
DISTILL_TASK = (
    "prune_distill=True needs a detection head (detect, segment, pose, obb; Ultralytics distills their neck "
    "features); got task {task}"
)
DISTILL_NO_TARGET = (
    "prune_distill=True distills from the model as it was before its first prune step, so it needs prune= or "
    "prune_latency=; accepted: add a target, or distill_model=<teacher.pt> to fine-tune with a teacher"
)
MAP_KEYS = ("metrics/mAP50-95(B)", "metrics/accuracy_top1")  # what the summary reports, per task (classify: top1)


def _zeroes_weights(state: dict) -> bool:
    """Whether a schedule zeroes weights (unstructured / 2:4) instead of removing channels."""
    return state.get("mode", "structured") != "structured"


def make_state(cfg: dict[str, Any], schedule: list[int], base: dict) -> dict[str, Any]:
    """A new ``prune_state``: the settings, the step epochs, the model before the first step, and progress."""
    options = options_from_cfg(cfg)
    options["sensitivity"] = str(options["sensitivity"]) if options["sensitivity"] else None
    return {
        "version": STATE_VERSION,
        "prune": cfg["prune"],  # GFLOPs fraction (structured) or weight fraction (sparse modes)
        "prune_ratio": cfg.get("prune_ratio"),  # one-shot: the per-layer channel ratio, when given instead
        "method": cfg["prune_method"],
        "round": cfg["prune_round"],
        "mode": cfg["prune_mode"],
        "lambda": cfg["prune_sparsity"],
        "options": options,
        "schedule": list(schedule),
        "latency": None,  # prune_latency: {"fraction", runtime, ..., measured and predicted ms of the model at start}
        "base": base,
        "done": 0,
        "history": [],
    }


def read_state(state: dict | None) -> dict | None:
    """A checkpoint's ``prune_state``, upgraded to the current version; PruneError if it cannot be read."""
    if state is None:
        return None
    version = state.get("version", 0) if isinstance(state, dict) else None
    if not isinstance(version, int) or version > STATE_VERSION:
        raise PruneError(
            f"model: its prune_state (version {version}) is newer than this yolo-prune reads (version "
            f"{STATE_VERSION}); accepted: a checkpoint from yolo-prune <= this version, or upgrade yolo-prune"
        )
    missing = [k for k in ("prune", "schedule", "done", "history", "base") if k not in state]
    if missing:
        raise PruneError(
            f"model: its prune_state lacks '{missing[0]}' and cannot be continued; accepted: a checkpoint written by "
            f"yolo-prune, or train it without resume"
        )
    if version == 0:  # written before the state was versioned: structured, no sparsity, default options
        state.setdefault("method", "l2")
        state.setdefault("round", 16)
        state.setdefault("mode", "structured")
        state.setdefault("lambda", 0.0)
        state.setdefault("options", {})
        state["version"] = STATE_VERSION
    return state


def check_train_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate yolo-prune training keys (pruning keys + schedule keys); returns them with defaults filled in."""
    schedule = {k: args[k] for k in TRAIN_DEFAULTS if k in args}
    cfg = check_prune_args({k: v for k, v in args.items() if k not in TRAIN_DEFAULTS})
    distill = schedule.get("prune_distill", False)
    if not isinstance(distill, bool):
        raise PruneError(f"prune_distill={distill!r} is invalid; accepted: True or False")

    if cfg["prune_ratio"] is not None:
        raise PruneError(
            "prune_ratio is for one-shot 'yolo-prune prune'; accepted in training: prune=<GFLOPs fraction>"
        )
    if cfg["prune_latency"] is not None and cfg["prune_method"] == "sensitivity":
        raise PruneError(
            "prune_method=sensitivity allocates by a GFLOPs table, prune_latency by measured latency; accepted: "
            "one of them"
        )
    if cfg["prune_latency"] is not None and cfg["prune_mode"] != "structured":
        raise PruneError(
            f"prune_latency needs prune_mode=structured (zeros do not run faster); got {cfg['prune_mode']}"
        )
    if cfg["prune_mode"] == "2:4":  # 2 of every 4 weights, at once: there is no amount and no gradual schedule
        if cfg["prune"] not in (None, 0.5):
            raise PruneError(
                f"prune={cfg['prune']} does not apply to prune_mode=2:4 (always 50%); accepted: leave it out"
            )
        if schedule.get("prune_steps") not in (None, 1):
            raise PruneError("prune_steps must be 1 with prune_mode=2:4; accepted: prune_steps=1 or leave it out")
        cfg["prune"], schedule["prune_steps"] = 0.5, 1
    return {**cfg, **TRAIN_DEFAULTS, **schedule}


class PruneCallbacks:
    """Prune ``prune`` of the GFLOPs in ``prune_steps`` steps between ``prune_start`` and ``prune_end``.

    With no ``prune`` key the callbacks only continue a schedule found in a resumed checkpoint.
    """

    def __init__(self, **keys: Any):
        self.cfg = check_train_args(keys)
        self.state: dict | None = None
        self._info: dict | None = None
        self.sparsity: BNSparsity | None = None  # proximal L1 on BN scales while steps remain
        self.keeper: MaskKeeper | None = None  # unstructured / 2:4: keeps zeroed weights at zero
        self.kept_only = False  # a sparse checkpoint fine-tuned without a schedule of its own
        self.table = None  # prune_latency: the run's latency table (kept in memory; cached on disk)
        self.table_done = 0  # steps done when the table was built (a resumed run times the pruned model)
        self._told_no_columns = False

    # --- events ---------------------------------------------------------------------------------------------------
    def on_pretrain_routine_start(self, trainer) -> None:
        """Refuse a new schedule that cannot run, before data, model and loggers are set up."""
        target = self.cfg["prune"] if self.cfg["prune"] is not None else self.cfg["prune_latency"]
        if self.cfg["prune_distill"] and target is None and not trainer.resume:  # resume: the checkpoint's schedule
            raise PruneError(DISTILL_NO_TARGET)
        if self.cfg["prune_distill"] and trainer.args.distill_model and not trainer.resume:
            raise PruneError(DISTILL_BOTH)
        if self.cfg["prune_distill"]:  # a stock trainer; PruneTrainerMixin does it on every DDP rank
            compile_off(trainer.args)
        if self.cfg["prune"] is not None and not trainer.resume:
            schedule = make_schedule(
                self.cfg["prune"],
                trainer.epochs,
                self.cfg["prune_steps"],
                self.cfg["prune_start"],
                self.cfg["prune_end"],
            )
            check_patience(trainer.args.patience, schedule.epochs, val=trainer.args.val)

    def on_pretrain_routine_end(self, trainer) -> None:
        """Start a schedule, pick up the one carried by a resumed checkpoint, or keep a sparse checkpoint's zeros."""
        model = student_of(trainer.model)
        raw = getattr(model, "prune_state", None)
        self.kept_only = False
        if trainer.resume and raw:  # a resumed run keeps its checkpoint's schedule, finished or not
            state = read_state(raw)
            if self.cfg["prune"] not in (None, state["prune"]):
                LOGGER.warning(
                    f"yolo-prune: resume ignores prune={self.cfg['prune']}, continuing prune={state['prune']}"
                )
            LOGGER.info(f"yolo-prune: resuming with {state['done']}/{len(state['schedule'])} steps done")
        elif self.cfg["prune"] is not None or self.cfg["prune_latency"] is not None:
            if self.cfg["prune_distill"] and trainer.args.distill_model:
                raise PruneError(DISTILL_BOTH)  # the Python path: on_pretrain_routine_start runs only without DDP
            if self.cfg["prune_distill"] and not hasattr(model.model[-1], "cv2"):
                raise PruneError(DISTILL_TASK.format(task=trainer.args.task))
            check_supported(model)
            info = model_info(model, FLOPS_IMGSZ)
            target = self.cfg["prune"] if self.cfg["prune"] is not None else self.cfg["prune_latency"]
            schedule = make_schedule(
                target, trainer.epochs, self.cfg["prune_steps"], self.cfg["prune_start"], self.cfg["prune_end"]
            )
            state = make_state(self.cfg, schedule.epochs, info)
            state["distill"] = (
                "self" if self.cfg["prune_distill"] else "model" if is_distilling(trainer.model) else None
            )
            if self.cfg["prune_latency"] is not None:
                lat = self._start_latency(trainer, model, state)
                if isinstance(lat, str):  # rank 0 refused the target: stop every rank with its line
                    raise PruneError(lat)
                state["latency"] = lat
                what = f"{lat['fraction']:.0%} of {lat['base_ms']:.2f} ms on {lat['runtime']} (imgsz {lat['imgsz']})"
            elif state["mode"] == "structured":
                what = f"{state['prune']:.0%} of {info['gflops']:.2f} GFLOPs"
            else:
                what = f"{state['prune']:.0%} of the weights ({state['mode']})"
            LOGGER.info(
                f"yolo-prune: removing {what} in {schedule.steps} steps at epochs {[e + 1 for e in schedule.epochs]} "
                f"({state['method']}, round {state['round']}"
                + (f", sparsity lambda {state['lambda']:g})" if state["lambda"] else ")")
            )
        elif isinstance(raw, dict) and _zeroes_weights(raw):  # fine-tuning a sparse model: its zeros stay zeros
            state, self.kept_only = read_state(copy.deepcopy(raw)), True
            state["schedule"] = state["schedule"][: state["done"]]  # an unfinished old schedule is not continued
            LOGGER.info(f"yolo-prune: fine-tuning a {state['mode']} sparse model; its zeroed weights stay zero")
        else:
            return
        if state["done"] < len(state["schedule"]):
            check_internals(trainer)  # a changed Ultralytics internal stops here, not at the first step
            self._check_schedule(trainer, state)
        self.state = state
        if state.get("distill") == "self":
            self._start_distillation(trainer, state)
        self._attach_state(trainer)
        self._info = model_info(model, FLOPS_IMGSZ)
        if _zeroes_weights(state) and sparsity(model, state["mode"]) > 0:  # resumed or fine-tuned: zeros are masks
            self.keeper = MaskKeeper(model, masks_from_zeros(model, state["mode"]))

    @staticmethod
    def _start_distillation(trainer, state: dict) -> None:
        """prune_distill: wrap the model for distillation at the start; on resume, distillation is off until step 1."""
        if not is_distilling(trainer.model):
            if trainer.resume:  # Ultralytics rebuilds the wrapper from distill_model (weights/teacher.pt)
                raise PruneError(
                    "model: this prune_distill run's checkpoint names no teacher (distill_model); accepted: resume a "
                    "last.pt written by yolo-prune with prune_distill=True"
                )
            start_self_distillation(trainer, rewrap_ddp)
            rebuild_optimizer(trainer, epoch=trainer.start_epoch)  # the optimizer must hold the projectors
            if trainer.args.dis == DEFAULT_CFG.dis:
                LOGGER.warning(
                    f"yolo-prune: prune_distill with dis={trainer.args.dis} (Ultralytics' default): on the shipped "
                    f"shapes models it scored about 1 mAP50-95 point below dis=1.0 "
                    f"(benchmarks/results/accuracy_converged.md); set dis= to choose the distillation weight"
                )
        if state["done"] == 0:
            set_weight(trainer, 0.0)
        LOGGER.info(
            f"yolo-prune: prune_distill: the teacher is the model as it is at the first prune step (epoch "
            f"{state['schedule'][0] + 1}); dis={trainer.args.dis} from then on"
            if state["done"] == 0
            else f"yolo-prune: prune_distill: distilling from {trainer.args.distill_model} (dis={trainer.args.dis})"
        )

    def _runtime(self, trainer, lat: dict) -> Runtime:
        """The runtime a latency schedule is measured on (torch: the trainer's device)."""
        dev = trainer.device  # the torch.device this rank trains on (DDP: its own GPU)
        device = check_runtime(lat["runtime"], str(dev) if lat["runtime"] == "torch" else None)
        return Runtime(lat["runtime"], device, lat["threads"], 1, lat["imgsz"])

    def _latency_table(self, trainer, model, lat: dict, round_to: int):
        """The latency table of the model as this run found it (built once per run, from the disk cache if there)."""
        if self.table is None:
            self.table = build_table(prepare_model(copy.deepcopy(model)), self._runtime(trainer, lat), round_to)
            # a resumed run times the model as it is now: step targets are scaled to it (see _structured_step)
            self.table_done = self.state["done"] if self.state else 0
        return self.table

    def _start_latency(self, trainer, model, state: dict) -> dict | None:
        """Build the table, measure the model, and refuse up front a target its convs cannot reach (rank 0; the
        other ranks get rank 0's answer, so all of them go on or stop together)."""
        if RANK not in {-1, 0}:
            return broadcast_from_rank0(None)
        try:
            lat = self._latency_start_rank0(trainer, model, state)
        except PruneError as e:
            broadcast_from_rank0(str(e))
            raise
        return broadcast_from_rank0(lat)

    def _latency_start_rank0(self, trainer, model, state: dict) -> dict:
        lat = {
            "fraction": self.cfg["prune_latency"],
            "runtime": self.cfg["prune_runtime"],
            "threads": self.cfg["prune_threads"],
            "imgsz": trainer.args.imgsz,
        }
        table = self._latency_table(trainer, model, lat, state["round"])
        lat.update(base_ms=round(table.full_ms, 3), table=str(table.path))
        net = prepare_model(copy.deepcopy(model))  # is the target reachable? (the trace costs about a second)
        options = {k: v for k, v in (state["options"] or {}).items() if k != "sensitivity"}
        plan_for_latency(  # ranked by l2: gradient criteria have no gradients yet, and reach barely depends on ranking
            net, lat["fraction"], self._runtime(trainer, lat), "l2", state["round"], table=table, measure=False,
            **options,
        )  # fmt: skip
        return lat

    @staticmethod
    def _check_schedule(trainer, state: dict) -> None:
        """Refuse a schedule that early stopping can cut short; warn where ``time=`` may."""
        remaining = state["schedule"][state["done"] :]
        # resumed: the stopper counts from its last improvement (best_epoch is 1-based), not from the resume epoch
        start = min(trainer.start_epoch, max(trainer.stopper.best_epoch - 1, 0)) if trainer.resume else 0
        check_patience(trainer.args.patience, remaining, start, val=trainer.args.val)
        if trainer.args.time:
            LOGGER.warning(
                f"yolo-prune: time={trainer.args.time} re-estimates the number of epochs after the first one; prune "
                f"steps are at epochs {[e + 1 for e in remaining]} of {trainer.epochs}, and steps past the new end "
                f"will not run (the run's end says how far it got)"
            )

    def _attach_state(self, trainer) -> None:
        """Point the model and its EMA at the one state this object updates.

        NaN recovery replaces the EMA with a deepcopy of the model (a copy of the state), and checkpoints pickle the
        EMA: re-attaching at each epoch start and step keeps every copy the current one.
        """
        student_of(trainer.model).prune_state = self.state
        if trainer.ema is not None:
            student_of(trainer.ema.ema).prune_state = self.state

    def on_train_epoch_start(self, trainer) -> None:
        """Run every step scheduled at or before this epoch that has not run yet."""
        st = self.state
        if st is None:
            return
        self._attach_state(trainer)
        while st["done"] < len(st["schedule"]) and trainer.epoch >= st["schedule"][st["done"]]:
            self.step(trainer)
        self._sync_hooks(trainer)

    def _sync_hooks(self, trainer) -> None:
        """Keep the optimizer step hooks on the current optimizer: sparsity while steps remain, masks throughout."""
        st = self.state
        if self.keeper is not None and self.keeper.optimizer is not trainer.optimizer:
            self.keeper.attach(trainer.optimizer)
        want = st.get("lambda", 0.0) > 0 and st["done"] < len(st["schedule"])
        if not want:
            if self.sparsity is not None:
                self.sparsity.detach()
                self.sparsity = None
            return
        if self.sparsity is None or self.sparsity.optimizer is not trainer.optimizer:
            model = student_of(trainer.model)
            exclude = ignored_modules(model, st["options"]["ignore"])
            if self.sparsity is not None:
                self.sparsity.detach()
            self.sparsity = BNSparsity(penalised_norms(model, exclude), st["lambda"])
            self.sparsity.attach(trainer.optimizer)

    def on_train_epoch_end(self, trainer) -> None:
        """Measure params and GFLOPs (and sparsity) for this epoch's metrics.

        They go into ``trainer.metrics``, the dict results.csv and every integration log as metrics:
        :class:`PruneTrainerMixin` adds them after each validation (which replaces that dict), and here they refresh
        the dict kept by epochs without validation. A trainer without the mixin gets no columns rather than a
        results.csv whose columns shift between epochs. ``trainer.lr`` is left to learning rates.
        """
        if self._info is None:
            self._info = model_info(student_of(trainer.model), FLOPS_IMGSZ)
        m = {
            "model/params_M": round(self._info["params"] / 1e6, 6),  # results.csv writes %.6g
            "model/GFLOPs": round(self._info["gflops"], 4),
        }
        if self.state and _zeroes_weights(self.state):
            m["model/sparsity"] = round(sparsity(student_of(trainer.model), self.state["mode"]), 4)
        trainer.prune_metrics = m
        if not isinstance(trainer, PruneTrainerMixin):
            if not self._told_no_columns:
                LOGGER.info(
                    f"yolo-prune: {type(trainer).__name__} has no PruneTrainerMixin, so results.csv and loggers get no "
                    f"model/params_M, model/GFLOPs columns (trainer.prune_metrics has them)"
                )
                self._told_no_columns = True
        elif isinstance(getattr(trainer, "metrics", None), dict):  # rank 0 only
            trainer.metrics.update(m)

    def on_train_end(self, trainer) -> None:
        """Before/after table of the run's pruning, and a warning if the schedule did not finish."""
        st = self.state
        if not st or self.kept_only:
            return
        n = len(st["schedule"])
        if st["done"] < n:
            now = self._info or model_info(student_of(trainer.model), FLOPS_IMGSZ)
            if _zeroes_weights(st):
                reached = f"sparsity {sparsity(student_of(trainer.model), st['mode']):.1%}"
            else:
                reached = f"{now['gflops']:.2f} GFLOPs, {1 - now['gflops'] / st['base']['gflops']:.1%} removed"
            if trainer.args.time and trainer.epoch + 1 >= trainer.epochs:
                why = f"time={trainer.args.time} ended the run"
            elif trainer.epoch + 1 < trainer.epochs:
                why = f"stopped early: early stopping (patience={trainer.args.patience}) or an external stop"
            else:
                why = "the last epoch came first"
            LOGGER.warning(
                f"yolo-prune: the prune schedule did not finish: {st['done']}/{n} steps ran before training stopped "
                f"at epoch {trainer.epoch + 1} ({why}); the model has {reached} of the "
                f"{st['prune'] if st['prune'] is not None else st['latency']['fraction']:.0%} asked"
            )
        needs = needs_yolo_prune(student_of(trainer.model))
        if needs:
            LOGGER.warning(
                f"yolo-prune: {trainer.best.name} and {trainer.last.name} need yolo-prune installed to load: blocks "
                f"{', '.join(needs)} have halves of different widths (prune_global / prune_layers)"
            )
        if not st["history"]:
            return
        col = "sparsity" if _zeroes_weights(st) else "reduction"
        metric = {"classify": "top1", "detect": "mAP50-95"}.get(trainer.args.task, "mAP50-95(B)")
        end = next((trainer.metrics[k] for k in MAP_KEYS if k in (getattr(trainer, "metrics", None) or {})), None)
        before, now = st["base"].get("map50_95"), self._info or model_info(student_of(trainer.model), FLOPS_IMGSZ)

        def score(v) -> str:
            return f"{v:>10.4f}" if isinstance(v, (int, float)) else f"{'':>10}"

        lines = [f"{'':>8}{'epoch':>7}{'params':>12}{'GFLOPs':>9}{col:>11}{metric:>10}{'seconds':>9}"]
        lines.append(
            f"{'before':>8}{'':>7}{st['base']['params']:>12,}{st['base']['gflops']:>9.2f}{0:>11.1%}{score(before)}{'':>9}"
        )
        for h in st["history"]:
            red = h["sparsity"] if "sparsity" in h else 1 - h["gflops"] / st["base"]["gflops"]
            lines.append(
                f"{'step ' + str(h['step']):>8}{h['epoch'] + 1:>7}{h['params']:>12,}{h['gflops']:>9.2f}{red:>11.1%}"
                f"{'':>10}{h['seconds']:>9.1f}"
            )
        red = (
            sparsity(student_of(trainer.model), st["mode"])
            if _zeroes_weights(st)
            else 1 - now["gflops"] / st["base"]["gflops"]
        )
        lines.append(
            f"{'after':>8}{trainer.epoch + 1:>7}{now['params']:>12,}{now['gflops']:>9.2f}{red:>11.1%}{score(end)}{'':>9}"
        )
        lines.append(
            f"{metric} before: the model just before step 1; after: "
            + (f"{trainer.best.name}'s final validation" if trainer.best.exists() else "the last epoch's validation")
            if end is not None
            else f"{metric} before: the model just before step 1"
        )
        last = st["history"][-1].get("latency")
        if last and "measured_ms" in last:
            lines.append(latency_line(last).replace("yolo-prune: ", "") + self._overall(last))
        LOGGER.info("yolo-prune summary\n" + "\n".join(lines))

    # --- the step -------------------------------------------------------------------------------------------------
    @staticmethod
    def _map_before(trainer) -> float | None:
        """mAP50-95 (classify: top-1 accuracy) of the model just before the first step, on rank 0.

        The last epoch's validation when it validated this model; otherwise (a step at the first epoch of a run or
        resume, ``val=False``) a validation of a copy of the EMA now, with a validator of its own: the trainer's needs
        loss items that exist only after the first batch.
        """
        if RANK not in {-1, 0}:
            return None
        metrics = getattr(trainer, "metrics", None)
        if not (trainer.args.val and trainer.epoch > trainer.start_epoch and isinstance(metrics, dict)):
            if trainer.world_size > 1:  # a validation on rank 0 alone would meet the other ranks' collectives
                return None
            args = copy.copy(trainer.args)
            args.plots, args.save_json = False, False
            validator = type(trainer.validator)(trainer.test_loader, save_dir=trainer.save_dir, args=args)
            metrics = validator(model=copy.deepcopy(student_of(trainer.ema.ema if trainer.ema else trainer.model)))
        found = [metrics[k] for k in MAP_KEYS if k in (metrics or {})]
        return round(float(found[0]), 4) if found else None

    def step(self, trainer) -> None:
        """One prune step: plan on rank 0, broadcast, apply to model and EMA, rebuild training state, checkpoint."""
        with hooks_off(trainer):  # distillation: the student is traced and copied without the wrapper's hooks
            self._step(trainer)
        if is_distilling(trainer.model):
            check_projectors(unwrap_model(trainer.model))
        save_after_step(trainer)

    def _step(self, trainer) -> None:
        st = self.state
        if st["done"] == 0:
            st["base"]["map50_95"] = self._map_before(trainer)
            if st.get("distill") == "self":
                refresh_teacher(trainer)
        t0 = time.perf_counter()
        model = student_of(trainer.model)
        k, n = st["done"] + 1, len(st["schedule"])
        before = self._info or model_info(model, FLOPS_IMGSZ)
        report = None
        if _zeroes_weights(st):
            self._sparsify_step(trainer, k, n)
        else:
            report = self._structured_step(trainer, model, k, n, before)
        self._info = after = model_info(model, FLOPS_IMGSZ)
        seconds = time.perf_counter() - t0
        st["done"] = k
        record = {"step": k, "epoch": trainer.epoch, **after, "seconds": round(seconds, 2)}
        if _zeroes_weights(st):
            record["sparsity"] = round(sparsity(model, st["mode"]), 4)
        if report:
            record["latency"] = report
        st["history"].append(record)
        # best.pt must never be an earlier, larger model: fitness tracking restarts with each step
        trainer.best_fitness = None
        trainer.stopper.best_fitness, trainer.stopper.best_epoch = 0.0, trainer.epoch  # 0.0: None raises TypeError
        change = (
            f"sparsity {record['sparsity']:.1%}"
            if "sparsity" in record
            else f"params {before['params']:,} -> {after['params']:,}, GFLOPs {before['gflops']:.2f} -> "
            f"{after['gflops']:.2f} ({1 - after['gflops'] / st['base']['gflops']:.1%} of the original removed)"
        )
        LOGGER.info(f"yolo-prune: step {k}/{n} at epoch {trainer.epoch + 1}: {change}, {seconds:.1f}s")
        if report and "measured_ms" in report:
            LOGGER.info(latency_line(report) + self._overall(report))
        if not _zeroes_weights(st) and st["prune"] is not None:
            warn_if_missed(st["prune"] * k / n, st["base"]["gflops"], after["gflops"], f"step {k}/{n}")
        self._attach_state(trainer)

    def _structured_step(self, trainer, model, k: int, n: int, before: dict) -> dict | None:
        """Plan on rank 0 (GFLOPs or latency target), broadcast, apply; returns the latency report of a latency step."""
        st = self.state
        lat = st.get("latency")
        keep = (1 - (st["prune"] or 0) * k / n) * st["base"]["gflops"]  # of the original; linear in GFLOPs
        options = dict(st.get("options") or {})
        # prune_layers ratios are of the original widths: step k takes the share that brings layer l to r*k/n
        options["layer_ratios"] = {
            key: 1 - (1 - r * k / n) / (1 - r * (k - 1) / n) for key, r in (options.get("layer_ratios") or {}).items()
        }
        prepare_model(model)
        plan, report = None, None
        if RANK in {-1, 0}:
            if lat:  # before any gradients: the table's forward must not add to them
                self._latency_table(trainer, model, lat, st["round"])
            if st["method"] in GRADIENT_METHODS:  # rank by gradients of real training batches at today's weights
                used = accumulate_gradients(
                    model, trainer_batches(trainer, GRAD_BATCHES), trainer_loss(trainer), GRADIENT_METHODS[st["method"]]
                )
                LOGGER.info(f"yolo-prune: {st['method']} importance from the gradients of {used} training batches")
            try:
                if lat:  # step k leaves 1 - F*k/n of the latency the run started with, as the table predicts it
                    options.pop("sensitivity", None)
                    # of the latency at the start; a resumed run's table timed the model after table_done steps
                    f, d = lat["fraction"], self.table_done
                    keep_ms = (1 - f * k / n) / (1 - f * d / n) * self.table.full_ms
                    base_run = self.table.full_ms / (1 - f * d / n)
                    plan, report = plan_for_latency(
                        model, lat["fraction"], self._runtime(trainer, lat), st["method"], st["round"],
                        table=self.table, keep_ms=keep_ms, base_ms=base_run, measure=k == n, **options,
                    )  # fmt: skip
                else:
                    plan = plan_for_target(
                        model,
                        prune=1 - keep / before["gflops"],
                        method=st["method"],
                        round_to=st["round"],
                        imgsz=FLOPS_IMGSZ,
                        **options,
                    )
            finally:
                model.zero_grad(set_to_none=True)  # the first backward of the epoch must not add to these
        plan = broadcast_plan(plan)
        apply_step(trainer, plan)
        check_forward(model)
        return report

    def _overall(self, report: dict) -> str:
        """Against the model the run started with (the last step's own measurement starts from step n-1's model)."""
        lat = self.state["latency"]
        return f"; since the start {lat['base_ms']:.2f} -> {report['measured_ms'][1]:.2f} ms " + (
            f"({lat['base_ms'] / report['measured_ms'][1]:.2f}x, target {1 / (1 - lat['fraction']):.2f}x)"
        )

    def _sparsify_step(self, trainer, k: int, n: int) -> None:
        """Unstructured / 2:4 step: zero weights (same masks on every rank: the weights are identical), mask the EMA."""
        st = self.state
        model = student_of(trainer.model)
        masks = sparsify(model, st["prune"] * k / n, st["mode"])
        if trainer.ema is not None:
            apply_masks(student_of(trainer.ema.ema), masks)
            trainer.ema = renew_ema(trainer.ema, model)  # prune.remove swapped weight storage: drop cached pairs
        self.keeper = MaskKeeper(model, masks)
        self.keeper.attach(trainer.optimizer)

    @property
    def callbacks(self) -> dict[str, Callable]:
        """Event -> handler, for ``trainer.add_callback`` / ``model.add_callback``."""
        return {
            "on_pretrain_routine_start": self.on_pretrain_routine_start,
            "on_pretrain_routine_end": self.on_pretrain_routine_end,
            "on_train_epoch_start": self.on_train_epoch_start,
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_train_end": self.on_train_end,
        }
