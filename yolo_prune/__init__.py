"""yolo-prune: channel-level structured pruning for Ultralytics YOLO, through torch-pruning's dependency graph."""

__version__ = "0.1.0"

from .model import add_pruning  # noqa: E402

__all__ = ["add_pruning", "__version__"]
