"""yolo-prune: channel-level structured pruning for Ultralytics YOLO, through torch-pruning's dependency graph."""

__version__ = "0.1.0"

from .callbacks import PruneCallbacks  # noqa: E402
from .datasets import builtin_dataset  # noqa: E402
from .engine import prune_model  # noqa: E402
from .model import add_pruning  # noqa: E402
from .trainer import PruneDetectionTrainer  # noqa: E402

__all__ = ["PruneCallbacks", "PruneDetectionTrainer", "__version__", "add_pruning", "builtin_dataset", "prune_model"]
