"""The modes yolo-prune runs itself besides training: one-shot pruning of a file (``oneshot``) and per-layer
sensitivity analysis (``sensitivity``)."""
