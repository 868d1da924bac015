"""Shared by the benchmark scripts: where results go, the machine line, and writing JSON + Markdown with the command."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """One line naming the machine and the thread count torch uses."""
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}"


def header() -> dict:
    """The command that is running, the machine and the date, for every result file."""
    return {"command": " ".join(["python", *sys.argv]), "machine": machine(), "date": time.strftime("%Y-%m-%d")}


def save(name: str, out: dict, body: list[str], root: Path = RESULTS) -> None:
    """Write <root>/<name>.json (``out``) and <root>/<name>.md (command/machine/date, then ``body``); print it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.json").write_text(json.dumps(out, indent=2))
    md = [f"Command: `{out['command']}`  ", f"Machine: {out['machine']}  ", f"Date: {out['date']}", "", *body]
    (root / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def save_csv(name: str, rows: list[dict], cols: list[str]) -> None:
    """Write results/<name>.csv with ``cols`` (other keys of the rows are left out)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.csv").write_text(buf.getvalue())
