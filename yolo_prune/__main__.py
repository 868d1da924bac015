"""``python -m yolo_prune`` is the ``yolo-prune`` command."""

from .cli import main

main()
