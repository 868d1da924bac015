"""``benchmarks/accuracy.py --profile converged``: pruning a converged model, against the alternatives, with seeds.

Per family, from the converged base (trained until val mAP50-95 gains < 0.005 over its last 10 epochs; N epochs):
  A    the base trained on unpruned for the fine-tuning budget E
  B    the default recipe (prune steps between epochs) at -30% / -50% GFLOPs, E epochs
  BKD  B with distillation from the model before its first step (prune_distill=True, dis=--dis)
  C    one-shot L2 prune of the base, then E epochs of fine-tuning (seed 0 only)
  D    the same yaml at the smallest width with >= B's GFLOPs, from scratch for N + E epochs
  L    prune_latency=<the profile's "latency", default 0.5> (ONNX Runtime, 1 thread) with E epochs (seed 0 only)
  AG, BG  A and B with a gentler fine-tuning recipe for a converged start (GENTLE: lower lr, no warmup; AG seed 0 only)
  BT, BLG B with the Taylor criterion / LAMP with global ranking (BG, BT, BLG: with seeds only when named in --rows)
E is each budget's share of N (short ~10%, long ~30%). A, B, BKD and D run with each seed; the table gives mean +/- std.
Every run's result is kept in its run folder (row.json): a rerun skips finished runs, so a long benchmark can continue.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

SEEDED = ("A", "B", "BKD", "D")
# a converged base restarted at the lr it started from dips for its first epochs: does a gentler restart recover more?
GENTLE = {"optimizer": "AdamW", "lr0": 0.0002, "warmup_epochs": 0}  # the bases' auto choice: AdamW, lr 0.001
# row B with other keys (seeds when asked: --rows BLG --seeds 3): the recipe levers measured on the converged base
VARIANTS = {
    "BG": GENTLE,
    "BT": {"prune_method": "taylor"},
    "BLG": {"prune_method": "lamp", "prune_global": True},
}
TITLES = {
    "A": "A unpruned, trained on",
    "B": "B default recipe",
    "BKD": "B+KD",
    "C": "C one-shot L2 + fine-tune",
    "D": "D smaller width from scratch",
    "L": "prune_latency (profile's fraction)",
    "AG": "A, gentle recipe",
    "BG": "B, gentle recipe",
    "BT": "B, Taylor criterion",
    "BLG": "B, LAMP global ranking",
}


def specs(rows: list[str], reductions: list[float], budgets: list[str], seeds: int) -> list[dict]:
    """Every run the benchmark makes for one family, in the order they run (cheap, decisive rows first)."""
    out = []
    for budget in budgets:
        for row in rows:
            reds = [None] if row in ("A", "AG", "L") else reductions
            for red in reds:
                for seed in range(seeds if row in SEEDED or row in VARIANTS else 1):
                    out.append({"row": row, "reduction": red, "budget": budget, "seed": seed})
    return sorted(out, key=lambda s: (budgets.index(s["budget"]), s["seed"], s["row"] == "D"))


def curve(run: Path) -> list[float]:
    """val mAP50-95 per epoch of a run (results.csv)."""
    import csv

    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(open(run / "results.csv"))]
    return [round(float(r["metrics/mAP50-95(B)"]), 4) for r in rows]


def run_spec(
    spec: dict, family: str, base: Path, base_info: dict, p: dict, device: str, work: Path, dis: float
) -> dict:
    """Train and evaluate one run (or read its kept result)."""
    from accuracy_shared import evaluate, train, width_yaml
    from ultralytics import YOLO

    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.engine.pruner import model_info
    from yolo_prune.engine.targets import prune_model

    row, red, budget, seed = spec["row"], spec["reduction"], spec["budget"], spec["seed"]
    n = base_info["epochs"]
    e = max(1, round(p["budgets"][budget] * n))
    name = f"{family}_{row}{'' if red is None else f'_p{round(red * 100)}'}_{budget}_s{seed}"
    if row == "BKD":
        name += f"_dis{dis:g}"
    kept = work / name / "row.json"
    if kept.exists():
        return json.loads(kept.read_text())
    t0 = time.perf_counter()
    if row in ("A", "AG"):
        best, _ = train(YOLO(str(base)), name, p, e, device, work, seed=seed, **(GENTLE if row == "AG" else {}))
    elif row in ("B", "BKD", *VARIANTS):
        extra = {"prune_distill": True, "dis": dis} if row == "BKD" else VARIANTS.get(row, {})
        best, _ = train(YOLO(str(base)), name, p, e, device, work, seed=seed, prune=red, **extra)
    elif row == "C":
        net = YOLO(str(base)).model
        prune_model(net, prune=red, prune_method="l2")
        pruned = save_checkpoint(net, work / f"{name}_oneshot.pt", {"task": "detect", "imgsz": p["imgsz"]})
        best, _ = train(YOLO(str(pruned)), name, p, e, device, work, seed=seed)
    elif row == "D":
        gflops = model_info(YOLO(str(base)).model, 640)["gflops"]
        yml, _ = width_yaml(family, p["scale"], (1 - red) * gflops, p["imgsz"], work / f"{name}.yaml")
        best, _ = train(YOLO(str(yml)), name, p, n + e, device, work, seed=seed)
    elif row == "L":
        best, _ = train(YOLO(str(base)), name, p, e, device, work, seed=seed, prune_latency=p.get("latency", 0.5))
    else:
        raise ValueError(row)
    seconds = round(time.perf_counter() - t0, 1)
    out = {**spec, "family": family, "epochs": e if row != "D" else n + e, "name": name, "train_s": seconds}
    out["dis"] = dis if row == "BKD" else None
    out.update(evaluate(best, p, device))
    out["curve"] = curve(work / name)
    kept.write_text(json.dumps(out, indent=2))
    return out


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def title(r: dict) -> str:
    """The row's title in tables and verdicts (B+KD with its distillation weight)."""
    return TITLES[r["row"]] + (f" (prune_distill, dis={r['dis']:g})" if r.get("dis") is not None else "")


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (family, row, reduction, budget, dis): means (and std of mAP) over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["family"], r["row"], r["reduction"], r["budget"], r.get("dis")), []).append(r)
    out = []
    for (fam, row, red, budget, dis), rs in groups.items():
        m, s = _stats([r["map50_95"] for r in rs])
        out.append({
            "family": fam, "row": row, "reduction": red, "budget": budget, "dis": dis, "epochs": rs[0]["epochs"],
            "seeds": len(rs), "params": rs[0]["params"], "gflops": rs[0]["gflops"],
            "map50": round(_stats([r["map50"] for r in rs])[0], 4),
            "map50_95": round(m, 4), "map50_95_std": round(s, 4),
            "onnx_ms": round(statistics.mean(r["onnx_ms"] for r in rs), 2),
            "train_s": round(statistics.mean(r["train_s"] for r in rs), 1),
            "first_epochs": rs[0]["curve"][:3],
        })  # fmt: skip
    return out


def verdicts(table: list[dict], bases: dict) -> list[str]:
    """The issue's criteria, per family and budget, said plainly: at -30% B or B+KD within 0.005 mAP50-95 of A; at
    -50% B or B+KD at least 0.010 above D."""
    lines = []
    for fam in bases:
        for budget in sorted({r["budget"] for r in table if r["family"] == fam}, reverse=True):  # short, long
            rows = [r for r in table if r["family"] == fam and r["budget"] == budget]
            a = next((r for r in rows if r["row"] == "A"), None)  # the reference is A with the same recipe as B
            for red, ref, need in ((0.3, "A", -0.005), (0.5, "D", 0.010)):
                cands = [r for r in rows if r["row"] in ("B", "BKD") and r["reduction"] == red]
                d = [r for r in table if r["family"] == fam and r["row"] == "D" and r["reduction"] == red]
                d.sort(key=lambda r: r["budget"] != budget)  # D of this budget if run, else D of another budget
                other = a if ref == "A" else (d[0] if d else None)
                if not cands or other is None:
                    lines.append(f"- {fam}, {budget} budget, -{red:.0%}: not measured (rows missing)")
                    continue
                best = max(cands, key=lambda r: r["map50_95"])
                gap = best["map50_95"] - other["map50_95"]
                ok = gap >= need
                lines.append(
                    f"- {fam}, {budget} budget ({best['epochs']} epochs), -{red:.0%} GFLOPs: best of B/B+KD is "
                    f"{title(best)} {best['map50_95']:.4f} vs {ref} ({other['epochs']} epochs) {other['map50_95']:.4f} "
                    f"({gap:+.4f}; target {'>= ' if need > 0 else 'within '}{abs(need):.3f}): "
                    f"**{'met' if ok else 'not met'}** (seeds {best['seeds']}/{other['seeds']})"
                )
    return lines


def write(name: str, runs: list[dict], bases: dict, out: dict) -> None:
    """JSON, Markdown (results_io.save), CSV and the mAP50-95 vs ONNX Runtime latency chart."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from results_io import RESULTS, save, save_csv

    table = aggregate(runs)
    cols = ["family", "row", "reduction", "budget", "dis", "epochs", "seeds", "params", "gflops", "map50", "map50_95",
            "map50_95_std", "onnx_ms", "train_s"]  # fmt: skip
    save_csv(name, table, cols)
    p = out["profile"]
    body = [
        "Bases: "
        + ", ".join(f"{f} {b['trained_epochs']} epochs to plateau (val mAP50-95 {b['best_map50_95']:.4f})" for f, b in bases.items())
        + "; "
        f"data {p['data']}, imgsz {p['imgsz']}, batch {p['batch']}, nbs {p['nbs']}. Budgets: "
        + ", ".join(f"{k} {v:.0%} of the base's epochs" for k, v in p["budgets"].items())
        + f". ONNX Runtime latency: batch 1, imgsz {p['imgsz']}, 1 thread, median of {p['runs']} runs. "
        "B+KD: prune_distill=True with the dis given. mAP50-95 is mean +/- std over the seeds run.",
        "",
        "| family | row | GFLOPs cut | budget (epochs) | seeds | params | GFLOPs@640 | mAP50-95 | mAP50 | ONNX RT ms | mAP50-95 first 3 epochs (seed 0) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in sorted(
        table,
        key=lambda r: (
            r["family"],
            list(p["budgets"]).index(r["budget"]),
            r["reduction"] or 0,
            list(TITLES).index(r["row"]),
            r["dis"] or 0,
        ),  # fmt: skip
    ):
        red = "" if r["reduction"] is None else f"{r['reduction']:.0%}"
        body.append(
            f"| {r['family']} | {title(r)} | {red} | {r['budget']} ({r['epochs']}) | {r['seeds']} | "
            f"{r['params']:,} | {r['gflops']:.2f} | {r['map50_95']:.4f} +/- {r['map50_95_std']:.4f} | {r['map50']:.4f} "
            f"| {r['onnx_ms']:.2f} | {', '.join(f'{x:.3f}' for x in r['first_epochs'])} |"
        )
    body += ["", "Criteria (issue #14):", *verdicts(table, bases), "", *out.get("notes", [])]
    save(name, {**out, "bases": bases, "table": table, "runs": runs}, body)

    fig, axes = plt.subplots(1, len(bases), figsize=(6 * len(bases), 4.5), dpi=120, squeeze=False)
    for ax, fam in zip(axes[0], bases):
        for r in (r for r in table if r["family"] == fam):
            cut = "" if r["reduction"] is None else f" -{r['reduction']:.0%}"
            label = f"{r['row']}{cut} {r['budget']}" + (f" dis={r['dis']:g}" if r["dis"] is not None else "")
            ax.errorbar(r["onnx_ms"], r["map50_95"], yerr=r["map50_95_std"], fmt="o", capsize=3)
            ax.annotate(label, (r["onnx_ms"], r["map50_95"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.axhline(bases[fam]["best_map50_95"], ls="--", c="gray", lw=0.8, label="converged base")
        if bases[fam].get("onnx_ms"):
            ax.scatter(bases[fam]["onnx_ms"], bases[fam]["best_map50_95"], marker="*", s=120, c="k", label="base")
        ax.set(
            xlabel="ONNX Runtime CPU ms (batch 1, 1 thread)", ylabel="val mAP50-95", title=f"{fam}: up-left is better"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png")
    plt.close(fig)


def run(families: list[str], rows: list[str], p: dict, device: str, work: Path, seeds: int, budgets: list[str],
        reductions: list[float], dis: float, name: str, out: dict) -> None:  # fmt: skip
    """The converged profile: bases, then every run, writing the results after each."""
    from accuracy_shared import converged_base

    bases = {}
    t0 = time.perf_counter()
    for fam in families:
        base, _ = converged_base(fam, p, device, work)
        bases[fam] = json.loads((base.parent.parent / "base.json").read_text())
        bases[fam].pop("curve", None)
        # epochs the base trained (results.csv): bases made before the Plateau fix counted best.pt's final validation
        # as one more epoch in "epochs", which still sizes the budgets so that kept runs stay comparable
        with open(base.parent.parent / "results.csv") as f:
            bases[fam]["trained_epochs"] = sum(1 for _ in f) - 1
        ms = base.parent.parent / "onnx_ms.txt"  # written by --remeasure
        if ms.exists():
            bases[fam]["onnx_ms"] = float(ms.read_text())
    for fam in families:
        base = work / f"{fam}_base" / "weights" / "best.pt"
        for spec in specs([r for r in rows if r], reductions, budgets, seeds):
            run_spec(spec, fam, base, bases[fam], p, device, work, dis)
            out["wall_s"] = round(time.perf_counter() - t0, 1)
            write(name, kept_runs(work, bases), bases, out)
    write(name, kept_runs(work, bases), bases, out)


def kept_runs(work: Path, bases: dict) -> list[dict]:
    """Every finished run in the work folder (also those of other processes running rows side by side)."""
    runs = [json.loads(f.read_text()) for f in sorted(work.glob("*/row.json"))]
    for r in runs:  # runs kept before "dis" was recorded: their name has it
        r.setdefault("dis", float(r["name"].rsplit("_dis", 1)[1]) if "_dis" in r["name"] else None)
    return [r for r in runs if r["family"] in bases]


def remeasure(work: Path, families: list[str], p: dict) -> None:
    """Time every run's best.pt again, all in alternation (``time_interleaved``) at 1 thread in one process, and write
    the medians into the kept results: timings taken while other runs trained on the same cores are noise."""
    from ultralytics import YOLO

    from yolo_prune.engine.runtime import exported_runner
    from yolo_prune.engine.runtime import time_interleaved

    files = {}
    for f in sorted(work.glob("*/row.json")):
        r = json.loads(f.read_text())
        if r["family"] in families:
            best = f.parent / "weights" / "best.pt"
            files[f] = YOLO(str(best)).export(format="onnx", imgsz=p["imgsz"], simplify=True)
    for fam in families:  # the base too, as the reference point of the chart
        files[fam] = YOLO(str(work / f"{fam}_base" / "weights" / "best.pt")).export(format="onnx", imgsz=p["imgsz"])
    ms = time_interleaved({k: exported_runner(v, "onnx", 1) for k, v in files.items()}, p["runs"], cpu=True)
    for k, v in ms.items():
        if isinstance(k, Path):
            r = json.loads(k.read_text())
            r["onnx_ms"] = round(v["median_ms"], 2)
            r["onnx_timing"] = "interleaved"
            k.write_text(json.dumps(r, indent=2))
        else:
            (work / f"{k}_base" / "onnx_ms.txt").write_text(f"{v['median_ms']:.2f}")
