"""The engine, the bottom layer: torch-pruning's dependency graph on Ultralytics models, and nothing of training.

``graph`` traces and groups, ``blocks`` splits and folds C2f/C2PSA, ``importance`` ranks, ``costs`` and ``latency``
price a candidate (GFLOPs, or milliseconds on a ``runtime``), ``allocate`` decides how many channels each group loses,
``pruner`` ranks and plans, ``plan`` applies a plan to any matching model, and ``targets`` plans to a GFLOPs or latency
target (``prune_model``). ``heads``, ``sparsity`` and ``unstructured`` are the class outputs, BatchNorm L1 and zeroed
weights.
"""
