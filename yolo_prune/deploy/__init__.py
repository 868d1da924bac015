"""Deployment, above training: Ultralytics' exporter with a parity check (``export``), and the side-by-side benchmark
of a pruned model against its original on the runtimes edge devices use (``benchmark``)."""
