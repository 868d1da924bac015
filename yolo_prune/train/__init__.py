"""Training, above the engine: the Ultralytics callbacks and trainers that prune between epochs.

``callbacks`` dispatches Ultralytics' events to ``setup`` (start or resume a schedule), ``step`` (one prune step),
``surgery`` (optimizer, EMA, DDP and last.pt after it), ``hooks``, ``latency_run``, ``distill`` and ``report``;
``state`` is the checkpoint's ``prune_state``, ``schedule`` when steps run, ``trainers`` the per-task trainers and
``model`` :func:`~yolo_prune.add_pruning`.
"""
