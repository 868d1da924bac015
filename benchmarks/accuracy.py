"""Accuracy benchmark: does pruning beat training a smaller model at the same cost?

Usage:
  python benchmarks/accuracy.py                               # quick profile, ~45 min on a 2-core CPU (E=10)
  python benchmarks/accuracy.py --profile full --device 0     # small models, shapes-2000 at 320, for a GPU
  python benchmarks/accuracy.py --levers                      # row B under each lever; writes accuracy_levers_*
  python benchmarks/accuracy.py --families yolo11 --rows B --recipe prune_method=taylor   # any yolo-prune key

Per family (yolo11, yolo26), on the same built-in data and the same total epoch budget of 2E epochs:
  A0  the trained model a user starts from: E epochs from scratch (not a row; A-C start from it)
  A   reference: A0 trained E more epochs, unpruned
  B   A0 pruned to ~50% of its GFLOPs by the plugin's default recipe (steps between epochs) while training E epochs
  C   naive: one-shot L2 magnitude prune of A0, then E epochs of fine-tuning
  D   the same yaml at a smaller width multiplier (>= B's GFLOPs), trained from scratch for all 2E epochs
Columns: params, GFLOPs@640, mAP50, mAP50-95 (val split, profile imgsz), ONNX Runtime CPU latency (batch 1, profile
imgsz), training seconds. Writes benchmarks/results/accuracy_<profile>.{csv,md,json,png} with the command.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from accuracy_shared import converged_base, evaluate, onnx_latency, train, width_yaml  # noqa: F401
from results_io import RESULTS, header, save, save_csv

PROFILES = {
    # nbs = batch: Ultralytics' nbs=64 would accumulate 4 batches and leave ~16 optimizer steps per epoch here
    "quick": {"scale": "n", "data": "shapes-1000", "imgsz": 160, "epochs": 10, "batch": 16, "nbs": 16, "runs": 100},
    "full": {"scale": "s", "data": "shapes-2000", "imgsz": 320, "epochs": 30, "batch": 32, "nbs": 64, "runs": 200},
    "smoke": {"scale": "n", "data": "shapes-16", "imgsz": 64, "epochs": 1, "batch": 8, "nbs": 8, "runs": 5},  # wiring
    # converged: the base trains until val mAP50-95 gains < 0.005 over its last 10 epochs (at most 150); rows then
    # fine-tune for 10% ("short") or 30% ("long") of the base's epochs. 128 px and 500 images: ~12 s an epoch on 2 cores
    "converged": {
        "scale": "n",
        "data": "shapes-500",
        "imgsz": 128,
        "epochs": 150,
        "batch": 16,
        "nbs": 16,
        "runs": 200,
        "plateau": [10, 0.005],
        "budgets": {"short": 0.1, "long": 0.3},
        "seeds": 3,
        "threads": 1,
        "ship": True,
        "latency": 0.25,
    },  # bases copied to yolo_prune/assets/ (the Quick start's model)
    # latency 0.25: at 128 px, batch 1, ORT 1 thread the convs are at most 27% of yolo11n's latency (the rest is fixed
    # per-call and per-op overhead), so prune_latency=0.5 is refused up front there
    "converged-smoke": {
        "scale": "n",
        "data": "shapes-16",
        "imgsz": 64,
        "epochs": 4,
        "batch": 8,
        "nbs": 8,
        "runs": 5,
        "plateau": [1, 1.0],
        "budgets": {"short": 0.4},
        "seeds": 2,
        "threads": 1,
    },  # wiring only
}
TARGET = 0.5  # fraction of GFLOPs removed in rows B, C and matched by D
LEVERS = {  # name -> yolo-prune keys / train keys for row B (added to --recipe)
    "default": {},
    "steps1": {"prune_steps": 1, "prune_start": 0},
    "steps2": {"prune_steps": 2},
    "round8": {"prune_round": 8},
    "warmup0": {"warmup_epochs": 0},
    "lr_half": {"optimizer": "AdamW", "lr0": 0.0005},
    "l1": {"prune_method": "l1"},
    "taylor": {"prune_method": "taylor"},
    "bn_sparsity": {"prune_method": "bn", "prune_sparsity": 0.5},
    "lamp_global": {"prune_method": "lamp", "prune_global": True},
    "random": {"prune_method": "random"},
    # second round: the first showed that a late last step leaves too few epochs to recover
    "early4": {"prune_steps": 4, "prune_start": 1, "prune_end": 4},
    "steps1_taylor": {"prune_steps": 1, "prune_start": 0, "prune_method": "taylor"},
    "steps1_lamp_global": {"prune_steps": 1, "prune_start": 0, "prune_method": "lamp", "prune_global": True},
    "steps1_warmup0": {"prune_steps": 1, "prune_start": 0, "warmup_epochs": 0},
    "early4_bn_sparsity": {
        "prune_steps": 4,
        "prune_start": 1,
        "prune_end": 4,
        "prune_method": "bn",
        "prune_sparsity": 2.0,
    },
}



def pretrained(family: str, p: dict, device: str, work: Path) -> tuple[Path, float]:
    """A0: E epochs from scratch, trained once per work dir and reused."""
    from ultralytics import YOLO

    best = work / f"{family}_A0" / "weights" / "best.pt"
    meta = work / f"{family}_A0" / "seconds.txt"
    if best.exists() and meta.exists():
        return best, float(meta.read_text())
    best, s = train(YOLO(f"{family}{p['scale']}.yaml"), f"{family}_A0", p, p["epochs"], device, work)
    meta.write_text(str(s))
    return best, s


def run_row(row: str, family: str, p: dict, device: str, work: Path, recipe: dict, tag: str = "") -> dict:
    """Train and evaluate one row; returns its table row."""
    from ultralytics import YOLO

    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.engine.pruner import model_info
    from yolo_prune.engine.targets import prune_model

    e = p["epochs"]
    name = f"{family}_{row}{('_' + tag) if tag else ''}"
    a0, a0_s = pretrained(family, p, device, work)
    if row == "A":
        best, s = train(YOLO(str(a0)), name, p, e, device, work)
    elif row == "B":
        target = {} if "prune_latency" in recipe else {"prune": TARGET}  # a latency target replaces the GFLOPs one
        best, s = train(YOLO(str(a0)), name, p, e, device, work, **{**target, **recipe})
    elif row == "C":
        t0 = time.perf_counter()
        net = YOLO(str(a0)).model
        prune_model(net, prune=TARGET, prune_method="l2")
        pruned = save_checkpoint(net, work / f"{name}_oneshot.pt", {"task": "detect", "imgsz": p["imgsz"]})
        best, _ = train(YOLO(str(pruned)), name, p, e, device, work, **recipe)
        s = round(time.perf_counter() - t0, 1)  # the one-shot prune included
    elif row == "D":
        base = model_info(YOLO(str(a0)).model, 640)["gflops"]
        yml, w = width_yaml(family, p["scale"], (1 - TARGET) * base, p["imgsz"], work / f"{name}.yaml")
        best, s = train(YOLO(str(yml)), name, p, 2 * e, device, work)
        a0_s = 0.0
    else:
        raise ValueError(row)
    out = {"family": family, "row": row + (f" ({tag})" if tag else ""), **evaluate(best, p, device)}
    out["train_s"] = round(s + a0_s, 1)  # whole budget: A0's epochs count for A, B and C
    return out


ROW_TITLES = {
    "A": "A reference (unpruned, 2E epochs)",
    "B": "B yolo-prune default (steps while fine-tuning)",
    "C": "C one-shot L2 + fine-tune",
    "D": "D smaller width, from scratch (2E epochs)",
}


def write(name: str, rows: list[dict], out: dict) -> None:
    """CSV, JSON + Markdown (via results_io.save) and the Pareto chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["family", "row", "params", "gflops", "map50", "map50_95", "onnx_ms", "train_s"]
    save_csv(name, rows, cols)
    pr = out["profile"]
    body = [
        f"Profile: {pr['scale']} models, data {pr['data']}, imgsz {pr['imgsz']}, E={pr['epochs']} (A0 = E epochs from "
        f"scratch; A, B, C = A0 + E epochs; D = 2E from scratch), batch {pr['batch']}, nbs {pr['nbs']}, seed 0; "
        f"B/C/D target {out['target']:.0%} of GFLOPs removed; ONNX Runtime latency at batch 1, imgsz {pr['imgsz']}, "
        f"median of {pr['runs']} runs; train s includes A0's epochs for A, B, C.",
        "",
        "| family | row | params | GFLOPs@640 | mAP50 | mAP50-95 | ONNX RT CPU ms | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    body += [
        f"| {r['family']} | {ROW_TITLES.get(r['row'], r['row'])} | {r['params']:,} | {r['gflops']:.2f} | "
        f"{r['map50']:.3f} | {r['map50_95']:.3f} | {r['onnx_ms']:.1f} | {r['train_s']:.0f} |"
        for r in rows
    ]
    body += ["", *out.get("notes", [])]
    save(name, {**out, "rows": rows}, body)

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for fam, marker in (("yolo11", "o"), ("yolo26", "s")):
        pts = [r for r in rows if r["family"] == fam]
        for r in pts:
            ax.scatter(r["gflops"], r["map50_95"], marker=marker, s=50)
            ax.annotate(f"{fam} {r['row']}", (r["gflops"], r["map50_95"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set(xlabel="GFLOPs@640", ylabel="mAP50-95", title=f"{name}: mAP50-95 vs GFLOPs (up-left is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png")
    plt.close(fig)


def parse_recipe(items: list[str]) -> dict:
    from ultralytics.cfg import parse_key_value_pair

    return dict(parse_key_value_pair(kv) for kv in items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=PROFILES, default="quick")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", default="yolo11,yolo26")
    ap.add_argument("--rows", default="A,B,C,D")
    ap.add_argument("--recipe", nargs="*", default=[], help="key=value added to row B (yolo-prune or train keys)")
    ap.add_argument("--levers", nargs="?", const=",".join(LEVERS), help="row B once per lever (first family only)")
    ap.add_argument("--epochs", type=int, help="override the profile's E")
    ap.add_argument("--work", default="runs/accuracy", help="where runs and A0 checkpoints are kept")
    ap.add_argument("--tag", default="", help="suffix of the result files' names")
    ap.add_argument("--seeds", type=int, help="converged: seeds of rows A, B, B+KD, D (default: the profile's 3)")
    ap.add_argument("--budgets", default="short,long", help="converged: fine-tuning budgets to run")
    ap.add_argument("--reductions", default="0.3,0.5", help="converged: GFLOPs fractions removed in B, B+KD, C, D")
    ap.add_argument("--dis", type=float, default=1.0, help="converged: distillation weight of row B+KD")
    ap.add_argument("--remeasure", action="store_true", help="converged: time every kept run again, interleaved")
    ap.add_argument("--report", action="store_true", help="converged: write the results of the kept runs, run none")
    a = ap.parse_args()
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    p = {**PROFILES[a.profile], "name": a.profile}
    if a.epochs:
        p["epochs"] = a.epochs
    work = Path(a.work).resolve() / f"{a.profile}_e{p['epochs']}"
    recipe = parse_recipe(a.recipe)
    families = a.families.split(",")
    t0 = time.perf_counter()
    out = {**header(), "profile": p, "target": TARGET, "recipe": recipe}
    if a.levers:
        rows = []
        for lever in a.levers.split(","):
            keys = LEVERS[lever]
            rows.append(run_row("B", families[0], p, a.device, work, {**recipe, **keys}, tag=lever))
            rows[-1]["row"] = lever
            rows[-1]["keys"] = json.dumps(keys)
            write(f"accuracy_levers_{a.profile}{a.tag}", rows, out)  # after each lever: a long run keeps what it has
        return
    if "plateau" in p:  # converged profiles
        if a.rows == "base":
            for fam in families:
                converged_base(fam, p, a.device, work)
            return
        from accuracy_converged import remeasure
        from accuracy_converged import run as run_converged

        if a.remeasure:  # on a quiet machine, after the runs: one interleaved timing of every model
            remeasure(work, families, p)

        rows = "A,B,BKD,C,D,L" if a.rows == "A,B,C,D" else a.rows  # the profile's own default rows
        rows = "" if a.report else rows
        out.update(dis=a.dis)
        run_converged(families, rows.split(","), p, a.device, work, a.seeds or p["seeds"], a.budgets.split(","),
                      [float(x) for x in a.reductions.split(",")], a.dis, f"accuracy_{a.profile}{a.tag}", out)  # fmt: skip
        return
    rows = []
    for fam in families:
        for row in a.rows.split(","):
            rows.append(run_row(row, fam, p, a.device, work, recipe if row == "B" else {}))
            out["wall_s"] = round(time.perf_counter() - t0, 1)
            write(f"accuracy_{a.profile}{a.tag}", rows, out)


if __name__ == "__main__":
    main()
