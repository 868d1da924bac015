"""yolo-prune: channel-level structured pruning for Ultralytics YOLO, through torch-pruning's dependency graph."""

__version__ = "0.1.0"
