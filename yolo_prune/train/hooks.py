"""Optimizer step hooks a schedule keeps on whatever optimizer the trainer has now (a prune step rebuilds it).

``prune_sparsity``: proximal L1 on BatchNorm scales while steps remain
(:class:`~yolo_prune.engine.sparsity.BNSparsity`).
``prune_mode=unstructured|2:4``: the zeroed weights are re-zeroed after every step
(:class:`~yolo_prune.engine.unstructured.MaskKeeper`), for the whole run.
"""

from __future__ import annotations

from ..checkpoint import student_of
from ..engine.graph import ignored_modules
from ..engine.sparsity import BNSparsity, penalised_norms
from ..engine.unstructured import MaskKeeper


class OptimizerHooks:
    """The sparsity penalty and the mask keeper of one run, re-attached whenever the optimizer changes."""

    def __init__(self):
        self.sparsity: BNSparsity | None = None
        self.keeper: MaskKeeper | None = None

    def keep(self, model, masks: dict, optimizer) -> None:
        """Keep ``masks`` on ``model`` after every step of ``optimizer`` (and of the ones after it)."""
        self.keeper = MaskKeeper(model, masks)
        self.keeper.attach(optimizer)

    def sync(self, trainer, state: dict) -> None:
        """Attach both to the trainer's current optimizer; drop the penalty once the last step has run."""
        if self.keeper is not None and self.keeper.optimizer is not trainer.optimizer:
            self.keeper.attach(trainer.optimizer)
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
