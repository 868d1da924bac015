"""Optimizer step hooks a schedule keeps on whatever optimizer the trainer has now (a prune step rebuilds it).

``prune_sparsity``: proximal L1 on BatchNorm scales while steps remain
(:class:`~yolo_prune.engine.sparsity.BNSparsity`); ``prune_reg``: DepGraph's group regularization while steps remain
(:class:`~yolo_prune.engine.sparsity.GroupDecay`, on groups traced again after each step).
``prune_mode=unstructured|2:4``: the zeroed weights are re-zeroed after every step
(:class:`~yolo_prune.engine.unstructured.MaskKeeper`), for the whole run.
``prune_warmup``: a linear LR warmup after each prune step (:class:`Rewarm`).
"""

from __future__ import annotations

import math

from ultralytics.utils import LOGGER

from ..checkpoint import student_of
from .distill import hooks_off
from ..engine.graph import ignored_modules
from ..engine.sparsity import BNSparsity, GroupDecay, group_slices, penalised_norms
from ..engine.unstructured import MaskKeeper


class Rewarm:
    """Optimizer step ``k`` (0-based) of the ``total`` after a prune step runs at ``(k + 1) / total`` of its LR.

    Ultralytics warms the LR up only at the start of a run (``warmup_epochs``); a prune step perturbs the weights and
    starts the optimizer afresh (Adam's first updates are full-size), which this ramp softens. The scheduled LR is put
    back right after each step, so Ultralytics' scheduler and its own warmup never see the scaling.

    Args:
        optimizer: The optimizer built after the prune step.
        total: Optimizer steps the ramp lasts.
        done: Steps of it already taken (a run resumed inside the ramp).
        step: The prune step it follows (1-based), so a later step starts a ramp of its own.
    """

    def __init__(self, optimizer, total: int, done: int = 0, step: int = 0):
        self.optimizer, self.total, self.count, self.step = optimizer, max(1, int(total)), int(done), step
        self._saved: list[float] | None = None
        self._handles = [optimizer.register_step_pre_hook(self._before), optimizer.register_step_post_hook(self._after)]

    def _before(self, optimizer, args, kwargs) -> None:
        if self.count >= self.total:
            return
        self._saved = [g["lr"] for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            g["lr"] *= (self.count + 1) / self.total

    def _after(self, optimizer, args, kwargs) -> None:
        if self._saved is None:
            return
        for g, lr in zip(optimizer.param_groups, self._saved):
            g["lr"] = lr
        self._saved, self.count = None, self.count + 1

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def rewarm_steps(trainer, state: dict) -> tuple[int, int]:
    """Optimizer steps of ``prune_warmup`` after the last prune step, and how many of them have run."""
    epochs = state["cfg"].get("prune_warmup") or 0.0  # 0.x states without the key: none
    if not (epochs > 0 and state["history"]):
        return 0, 0
    per_epoch = len(trainer.train_loader) / max(int(getattr(trainer, "accumulate", 1)), 1)
    since = trainer.epoch - state["history"][-1]["epoch"]  # steps run at the start of an epoch
    if since < 0:  # a step of another run (its epochs counted from another start): none of this run's
        return 0, 0
    return math.ceil(epochs * per_epoch), math.floor(since * per_epoch)


class OptimizerHooks:
    """The penalties, the mask keeper and the LR warmup of one run, re-attached whenever the optimizer changes."""

    def __init__(self):
        self.sparsity: BNSparsity | None = None
        self.keeper: MaskKeeper | None = None
        self.rewarm: Rewarm | None = None
        self.decay: GroupDecay | None = None

    def sync_rewarm(self, trainer, state: dict) -> None:
        """A ramp on the trainer's optimizer while the last prune step's ``prune_warmup`` lasts."""
        total, done = rewarm_steps(trainer, state)
        r = self.rewarm
        if r is not None and r.optimizer is trainer.optimizer and r.step == state["done"]:
            return
        if r is not None:
            r.detach()
            self.rewarm = None
        if done < total:
            self.rewarm = Rewarm(trainer.optimizer, total, done, state["done"])
            LOGGER.info(f"yolo-prune: LR warmup after step {state['done']}: {total - done} optimizer steps "
                        f"(prune_warmup={state['cfg']['prune_warmup']:g})")  # fmt: skip

    def keep(self, model, masks: dict, optimizer) -> None:
        """Keep ``masks`` on ``model`` after every step of ``optimizer`` (and of the ones after it)."""
        self.keeper = MaskKeeper(model, masks)
        self.keeper.attach(optimizer)

    def sync_decay(self, trainer, state: dict) -> None:
        """``prune_reg`` on the trainer's optimizer while steps remain, on the groups of the model as it is now."""
        reg = state["cfg"].get("prune_reg") or 0.0  # 0.x states without the key: none
        if self.decay is not None and (self.decay.optimizer is not trainer.optimizer or not reg > 0
                                       or state["done"] >= len(state["schedule"])):  # fmt: skip
            self.decay.detach()  # a step rebuilt the optimizer (and the groups changed), or the last step ran
            self.decay = None
        if self.decay is None and reg > 0 and state["done"] < len(state["schedule"]):
            with hooks_off(trainer):  # the groups are traced on a copy: no distillation feature hooks on it
                groups = group_slices(student_of(trainer.model), state["cfg"]["prune_ignore"])
            self.decay = GroupDecay(groups, reg)
            self.decay.attach(trainer.optimizer)

    def sync_sparsity(self, trainer, state: dict) -> None:
        """``prune_sparsity`` on the trainer's optimizer while steps remain."""
        lam = state["cfg"]["prune_sparsity"]
        if not (lam > 0 and state["done"] < len(state["schedule"])):
            if self.sparsity is not None:
                self.sparsity.detach()
                self.sparsity = None
            return
        if self.sparsity is None or self.sparsity.optimizer is not trainer.optimizer:
            model = student_of(trainer.model)
            exclude = ignored_modules(model, state["cfg"]["prune_ignore"])
            if self.sparsity is not None:
                self.sparsity.detach()
            self.sparsity = BNSparsity(penalised_norms(model, exclude), lam)
            self.sparsity.attach(trainer.optimizer)

    def sync(self, trainer, state: dict) -> None:
        """Attach them to the trainer's current optimizer; drop the penalties once the last step has run.

        The ramp is attached last, so its post-step hook puts the scheduled LR back after the penalties have read
        the ramped one (both decay by the LR the step ran at).
        """
        if self.keeper is not None and self.keeper.optimizer is not trainer.optimizer:
            self.keeper.attach(trainer.optimizer)
        self.sync_decay(trainer, state)
        self.sync_sparsity(trainer, state)
        self.sync_rewarm(trainer, state)
