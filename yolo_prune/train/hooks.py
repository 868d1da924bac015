"""Optimizer step hooks a schedule keeps on whatever optimizer the trainer has now (a prune step rebuilds it).

``prune_sparsity``: proximal L1 on BatchNorm scales while steps remain
(:class:`~yolo_prune.engine.sparsity.BNSparsity`); ``prune_reg``: DepGraph's group regularization while steps remain
(:class:`~yolo_prune.engine.sparsity.GroupDecay`, on groups traced again after each step).
``prune_mode=unstructured|2:4``: the zeroed weights are re-zeroed after every step
(:class:`~yolo_prune.engine.unstructured.MaskKeeper`), for the whole run.
"""

from __future__ import annotations

from ..checkpoint import student_of
from ..engine.graph import ignored_modules
from ..engine.sparsity import BNSparsity, GroupDecay, group_slices, penalised_norms
from ..engine.unstructured import MaskKeeper
from .distill import hooks_off


class OptimizerHooks:
    """The penalties and the mask keeper of one run, re-attached whenever the optimizer changes."""

    def __init__(self):
        self.sparsity: BNSparsity | None = None
        self.keeper: MaskKeeper | None = None
        self.decay: GroupDecay | None = None

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
        """Attach them to the trainer's current optimizer; drop the penalties once the last step has run."""
        if self.keeper is not None and self.keeper.optimizer is not trainer.optimizer:
            self.keeper.attach(trainer.optimizer)
        self.sync_decay(trainer, state)
        self.sync_sparsity(trainer, state)
