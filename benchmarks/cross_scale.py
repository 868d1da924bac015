"""Beat the smaller model: the s base pruned to the n base's measured latency, against the n base trained on.

Usage:
  python benchmarks/cross_scale.py --bases /tmp/bench/bases          # yolo11 and yolo26, 3 seeds, 30 epochs each
  python benchmarks/cross_scale.py --bases runs/bases --families yolo11 --seeds 1 --epochs 10 --name cross_scale_quick
  python benchmarks/cross_scale.py --bases /tmp/bench/bases --families yolo11 --seeds 1 --lever prune_steps=8
  python benchmarks/cross_scale.py --bases /tmp/bench/bases --families yolo11 --seeds 1 --latency-imgsz 640 \
      --name cross_scale_640                                       # latency matched at the deployment size
  python benchmarks/cross_scale.py --bases /tmp/bench/bases --seeds 3 --latency-imgsz 640 --rows S2N_L1,A_n \
      --name cross_scale_640_seeds                                 # the criterion's two rows over 3 seeds
  python benchmarks/cross_scale.py --bases /tmp/bench/bases --seeds 3 --latency-imgsz 640 --rows NG --cuts 0.3 \
      --lever prune_method=lamp,prune_global=True --no-timing      # a lever on the -30% rows, judged by mAP alone

Bases: ``benchmarks/bases.py`` (every epoch of the schedule, then close_mosaic), in ``--bases`` as
``<family><scale>_base/weights/best.pt``. Rows per family, each fine-tuned for the same ``--epochs`` with the same
recipe, per seed:
  A_n   the n base trained on
  A_s   the s base trained on
  S2N_L the s base with ``prune_latency`` set to n's measured latency (ONNX Runtime, 1 thread, imgsz of the data)
  S2N_G the s base with ``prune=`` set to n's GFLOPs
  S2N_L1 (``--latency-imgsz N``) the s base one-shot pruned to n's latency measured at N px, then fine-tuned
  NG    the n base with the default recipe at ``prune=`` each ``--cuts`` fraction of its GFLOPs (the -30% criterion)
  ``--lever key=value,...``: the ``--rows`` rows (default S2N_L, S2N_L1 with ``--latency-imgsz``; not the chart's
        front rows) with those keys added (a recipe lever); planner keys go to the one-shot prune of S2N_L1
and, seed 0 only, the points of the Pareto chart: the s base at other latency targets (``--fronts``) and the n base
at them. n's latency is measured once, interleaved with s at 1 thread (the target every S2N_L run prunes to). At the
end every run's best.pt is exported to ONNX and timed again, all interleaved at 1 thread in one process, so the
chart's x axis is one measurement. Every run's result is kept in its folder (row.json): a rerun skips finished runs.
A row.json copied in from an earlier result (with ``weights/best.pt`` of the same architecture, for the timing) and
a ``reused`` note is listed as such in the results.
Results: ``benchmarks/results/<name>.{json,md,csv,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from pathlib import Path

from results_io import RESULTS, header, save, save_csv

P = {"data": "shapes-500", "imgsz": 128, "batch": 16, "nbs": 16, "runs": 100, "threads": 1}  # as benchmarks/bases.py
TITLES = {"A_n": "n base trained on", "A_s": "s base trained on", "S2N_L": "s pruned to n's latency",
          "S2N_L1": "s one-shot pruned to n's latency, then fine-tuned", "S2N_G": "s pruned to n's GFLOPs",
          "SL": "s at prune_latency", "NL": "n at prune_latency",
          "SL1": "s one-shot at prune_latency, then fine-tuned",
          "NL1": "n one-shot at prune_latency, then fine-tuned",
          "NG": "n pruned by GFLOPs"}  # fmt: skip
ENGINE = ("prune_method", "prune_round", "prune_global", "prune_max_ratio", "prune_ignore", "prune_layers")  # planner
LAT = {"imgsz": P["imgsz"]}  # where latency is measured (--latency-imgsz: the deployment size; training stays at 128)


def ms_key() -> str:
    """The row field of the latency measured at LAT's size."""
    return "onnx_ms" if LAT["imgsz"] == P["imgsz"] else f"onnx_ms_{LAT['imgsz']}"


def n_target(bases: Path, family: str) -> dict:
    """n's latency and GFLOPs as fractions of s's: measured once (interleaved, 1 thread), kept in the bases folder."""
    sz = LAT["imgsz"]
    kept = bases / f"{family}_cross_target{'' if sz == P['imgsz'] else f'_{sz}'}.json"
    if kept.exists():
        return json.loads(kept.read_text())
    from ultralytics import YOLO

    from yolo_prune.engine.pruner import model_info
    from yolo_prune.engine.runtime import exported_runner, time_interleaved

    w = {s: bases / f"{family}{s}_base" / "weights" / "best.pt" for s in ("n", "s")}
    files = {s: YOLO(str(f)).export(format="onnx", imgsz=sz, simplify=True) for s, f in w.items()}
    reps = [time_interleaved({s: exported_runner(f, "onnx", 1, sz) for s, f in files.items()}, P["runs"], cpu=True)
            for _ in range(3)]  # fmt: skip
    ratio = statistics.median(r["n"]["median_ms"] / r["s"]["median_ms"] for r in reps)
    g = {s: model_info(YOLO(str(f)).model, 640)["gflops"] for s, f in w.items()}
    out = {"latency_ratio": round(ratio, 4), "prune_latency": round(1 - ratio, 4),
           "gflops_n": round(g["n"], 3), "gflops_s": round(g["s"], 3), "prune": round(1 - g["n"] / g["s"], 4),
           "ms": {s: [round(r[s]["median_ms"], 2) for r in reps] for s in ("n", "s")}}  # fmt: skip
    kept.write_text(json.dumps(out, indent=2))
    return out


def specs(
    seeds: int, fronts: list[float], lever: str | None = None, only: list[str] | None = None, cuts: tuple = (0.3,)
) -> list[dict]:
    """Every run for one family, seeds outermost (a stopped benchmark has whole seeds), the chart's points last; with
    ``lever`` (``key=value,...``), only the rows of ``only`` (default: s to n's latency) with those keys added. With
    latency measured at the deployment size (``--latency-imgsz``), the latency rows are one-shot there, then
    fine-tuned (S2N_L1, SL1, NL1).
    ``only`` keeps those rows (``--rows``: e.g. the criterion's two over more seeds). ``cuts``: the NG rows' GFLOPs
    fractions, each with every seed."""
    one = LAT["imgsz"] != P["imgsz"]
    main, fr = ("S2N_L1", ("SL1", "NL1")) if one else ("S2N_L", ("SL", "NL"))
    at = {"latency_imgsz": LAT["imgsz"]} if one else {}
    if lever:  # the lever on the rows of --rows (default: the s-to-n-latency row), every seed
        return [{"row": r, "seed": s, "fraction": c, "lever": lever, **(at if r == main else {})}
                for s in range(seeds) for r in (only or [main])
                for c in (cuts if r == "NG" else (None,))]  # fmt: skip
    rows = (main, "A_n", "S2N_G", "A_s")
    out = [spec for s in range(seeds) for spec in (
        *({"row": r, "seed": s, "fraction": None, **(at if r == main else {})} for r in rows),
        *({"row": "NG", "seed": s, "fraction": c} for c in cuts))]  # fmt: skip
    out += [{"row": r, "seed": 0, "fraction": f, **at} for f in fronts for r in fr]
    return [o for o in out if not only or o["row"] in only]


def lever_keys(lever: str | None) -> dict:
    """``prune_max_ratio=0.5,prune_steps=8`` -> keys (values read as YAML, as the CLI reads them)."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in lever.split(","))} if lever else {}


def run_spec(spec: dict, family: str, bases: Path, target: dict, epochs: int, device: str, work: Path) -> dict:
    """Fine-tune one row from its base (or read its kept result)."""
    from accuracy_shared import evaluate, train
    from ultralytics import YOLO

    from yolo_prune.cfg import PruneError

    row, seed, frac = spec["row"], spec["seed"], spec["fraction"]
    tag = "".join(c if c.isalnum() or c == "." else "_" for c in spec.get("lever") or "")
    tag += f"{spec['latency_imgsz']}" if spec.get("latency_imgsz") else ""
    name = (
        f"{family}_{row}{'' if frac is None else f'_{round(frac * 100)}'}{f'_{tag}' if tag else ''}_e{epochs}_s{seed}"
    )
    kept = work / name / "row.json"
    if kept.exists():
        return json.loads(kept.read_text())
    scale = "n" if row in ("A_n", "NL", "NL1", "NG") else "s"
    base = bases / f"{family}{scale}_base" / "weights" / "best.pt"
    ort = {"prune_runtime": "onnxruntime", "prune_threads": 1}  # as n's latency was measured: 1 thread
    keys = {"S2N_L": {"prune_latency": target["prune_latency"], **ort}, "S2N_G": {"prune": target["prune"]},
            "SL": {"prune_latency": frac, **ort}, "NL": {"prune_latency": frac, **ort},
            "NG": {"prune": frac}}.get(row, {})  # fmt: skip
    keys.update(lever_keys(spec.get("lever")))
    t0 = time.perf_counter()
    if row in ("S2N_L1", "SL1", "NL1"):  # one-shot at the latency size (ONNX Runtime, 1 thread), then fine-tuned at 128
        from yolo_prune import prune_model
        from yolo_prune.checkpoint import save_checkpoint
        from yolo_prune.engine.runtime import Runtime

        sz, net = spec["latency_imgsz"], YOLO(str(base)).model
        aim = target["prune_latency"] if row == "S2N_L1" else frac
        keys = {"prune_latency": aim, "imgsz": sz, "prune_threads": 1, **lever_keys(spec.get("lever"))}
        eng = {k: v for k, v in keys.items() if k in ENGINE}  # the planner's lever keys go to the one-shot prune
        rt = Runtime("onnxruntime", "cpu", 1, 1, sz)
        try:
            spec = {**spec, "oneshot": prune_model(net, prune_latency=aim, imgsz=sz, runtime=rt, **eng).latency}
        except PruneError as e:  # n's latency out of s's reach here: s as close as it gets, with the refusal kept
            aim = float(re.search(r"prune_latency <= ([0-9.]+)", str(e)).group(1)) - 0.01
            keys["prune_latency"], net = aim, YOLO(str(base)).model
            spec = {**spec, "out_of_reach": str(e), "reached": aim,
                    "oneshot": prune_model(net, prune_latency=aim, imgsz=sz, runtime=rt, **eng).latency}  # fmt: skip
        work.mkdir(parents=True, exist_ok=True)
        base = save_checkpoint(net, work / f"{name}_oneshot.pt", {"task": "detect", "imgsz": P["imgsz"]})
    try:
        best, _ = train(YOLO(str(base)), name, P, epochs, device, work, seed=seed,
                        **({k: v for k, v in lever_keys(spec.get("lever")).items() if k not in ENGINE}
                           if "latency_imgsz" in spec else keys))  # fmt: skip
    except PruneError as e:  # the target out of reach at this size on this runtime: kept as a row that says so
        out = {
            **spec,
            "family": family,
            "scale": scale,
            "epochs": epochs,
            "name": name,
            "keys": keys,
            "refused": str(e),
        }
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(out, indent=2))
        return out
    out = {**spec, "family": family, "scale": scale, "epochs": epochs, "name": name, "keys": keys,
           "train_s": round(time.perf_counter() - t0, 1), **evaluate(best, P, device)}  # fmt: skip
    kept.write_text(json.dumps(out, indent=2))
    return out


def remeasure(work: Path, families: list[str]) -> None:
    """Every run's best.pt timed again on ONNX Runtime, all in alternation at 1 thread in one process, 3 passes (the
    median of each model's three)."""
    from ultralytics import YOLO

    from yolo_prune.engine.runtime import exported_runner, time_interleaved

    files = {}
    for f in sorted(work.glob("*/row.json")):
        r = json.loads(f.read_text())
        if r["family"] in families and "refused" not in r:
            best = f.parent / "weights" / "best.pt"
            files[f] = YOLO(str(best)).export(format="onnx", imgsz=LAT["imgsz"], simplify=True)
    runners = {k: exported_runner(v, "onnx", 1, LAT["imgsz"]) for k, v in files.items()}
    reps = [time_interleaved(runners, P["runs"], cpu=True) for _ in range(3)]  # one pass can be off on a shared machine
    for k in files:
        r = json.loads(k.read_text())
        r.update({ms_key(): round(statistics.median(m[k]["median_ms"] for m in reps), 3),
                  ms_key() + "_passes": [round(m[k]["median_ms"], 3) for m in reps],
                  "onnx_timing": "interleaved, 1 thread, median of 3 passes"})  # fmt: skip
        k.write_text(json.dumps(r, indent=2))


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (family, row, fraction): means and std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in (r for r in runs if "refused" not in r):
        groups.setdefault((r["family"], r["row"], r["fraction"], r.get("lever")), []).append(r)
    out = []
    order = lambda kv: (kv[0][0], list(TITLES).index(kv[0][1]), kv[0][3] or "")  # noqa: E731
    for (fam, row, frac, lever), rs in sorted(groups.items(), key=order):
        maps = [r["map50_95"] for r in rs]
        out.append({"family": fam, "row": row, "fraction": frac, "lever": lever, "seeds": len(rs),
                    "epochs": rs[0]["epochs"],
                    "params": rs[0]["params"], "gflops": rs[0]["gflops"], "map50_95": round(statistics.mean(maps), 4),
                    "map50_95_std": round(statistics.stdev(maps), 4) if len(maps) > 1 else 0.0,
                    "onnx_ms": round(statistics.mean([r[ms_key()] for r in rs if ms_key() in r] or [math.nan]), 3),
                    "train_s": round(statistics.mean(r["train_s"] for r in rs), 1)})  # fmt: skip
    return out


def verdicts(table: list[dict], need: float) -> list[str]:
    """The issue's criteria per family: s pruned to n's latency beats A_n by ``need`` mAP50-95, and n pruned by the
    default recipe (NG) is at most 0.5 below A_n (means of the seeds)."""
    lines = []
    for fam in sorted({r["family"] for r in table}):
        rows = {r["row"]: r for r in table if r["family"] == fam and r["fraction"] is None and not r["lever"]}
        if "A_n" not in rows or not {"S2N_L", "S2N_L1"} & set(rows):
            lines.append(f"- {fam}: not measured (rows missing)")
            continue
        b, a = rows.get("S2N_L1") or rows["S2N_L"], rows["A_n"]
        gap = b["map50_95"] - a["map50_95"]
        lines.append(f"- {fam}: s pruned to n's latency {b['map50_95']:.4f} ({b['onnx_ms']:.2f} ms) vs A_n "
                     f"{a['map50_95']:.4f} ({a['onnx_ms']:.2f} ms): {gap:+.4f}, target >= +{need:.3f}: "
                     f"**{'met' if gap >= need else 'not met'}** (seeds {b['seeds']}/{a['seeds']})")  # fmt: skip
    # the -30% criterion: the default recipe (no lever) within 0.5 of A_n
    for r in (r for r in table if r["row"] == "NG" and not r["lever"]):
        a = next((x for x in table if x["family"] == r["family"] and x["row"] == "A_n"), None)
        if a:
            gap = r["map50_95"] - a["map50_95"]
            lines.append(f"- {r['family']}: n at -{r['fraction']:.0%} GFLOPs (default recipe) {r['map50_95']:.4f} vs "
                         f"A_n {a['map50_95']:.4f}: {gap:+.4f}, target >= -0.005: "
                         f"**{'met' if gap >= -0.005 else 'not met'}** (seeds {r['seeds']}/{a['seeds']})")  # fmt: skip
    return lines


def write(name: str, runs: list[dict], targets: dict, out: dict) -> None:
    """JSON, Markdown, CSV and the Pareto chart (mAP50-95 against ONNX Runtime ms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = aggregate(runs)
    save_csv(name, table, list(table[0]) if table else [])
    body = [f"Data {P['data']}, imgsz {P['imgsz']}, batch {P['batch']}; every row fine-tuned {out['epochs']} epochs "
            f"from its base (benchmarks/bases.py) with the same recipe. ONNX Runtime: imgsz {LAT['imgsz']}, batch 1, "
            + ("1 thread, not re-timed (--no-timing: ms only where a kept row has them). " if out.get("no_timing")
               else "1 thread, every run's best.pt timed interleaved, the median of 3 passes. ")
            + "Targets: " + "; ".join(
                f"{f}: n/s latency {t['latency_ratio']:.3f} (prune_latency={t['prune_latency']:.3f}), GFLOPs "
                f"{t['gflops_n']:.2f}/{t['gflops_s']:.2f} (prune={t['prune']:.3f})" for f, t in targets.items()),
            "", "| family | row | target | seeds | params | GFLOPs@640 | mAP50-95 | ONNX RT ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in table:
        frac = "" if r["fraction"] is None else f"{r['fraction']:.0%}"
        title = TITLES[r["row"]] + (f" ({r['lever']})" if r["lever"] else "")
        body.append(f"| {r['family']} | {title} | {frac} | {r['seeds']} | {r['params']:,} | "
                    f"{r['gflops']:.2f} | {r['map50_95']:.4f} +/- {r['map50_95_std']:.4f} | "
                    f"{r['onnx_ms']:.2f} |")  # fmt: skip
    body += ["", *(f"Refused: {r['name']}: {r['refused']}" for r in runs if "refused" in r)]
    body += [f"Out of reach: {r['name']}: {r['out_of_reach']}; run at prune_latency={r['reached']:.2f} instead"
             for r in runs if "out_of_reach" in r]  # fmt: skip
    body += [f"Reused: {r['name']}: {r['reused']}" for r in runs if "reused" in r]
    body += ["", "Criterion (issue #21):", *verdicts(table, 0.015)]
    a_n = {r["family"]: r for r in table if r["row"] == "A_n"}
    cut = lambda r: "" if r["fraction"] is None else f" at -{r['fraction']:.0%}"  # noqa: E731
    body += [f"- lever {r['lever']}: {r['family']} {TITLES[r['row']]}{cut(r)} {r['map50_95']:.4f} vs A_n "
             f"{a_n[r['family']]['map50_95']:.4f} ({r['map50_95'] - a_n[r['family']]['map50_95']:+.4f}, seeds "
             f"{r['seeds']})" for r in table if r["lever"] and r["family"] in a_n]  # fmt: skip
    save(name, {**out, "targets": targets, "table": table, "runs": runs}, body)

    fams = sorted(targets)
    one = LAT["imgsz"] != P["imgsz"]  # the latency rows of this mode: one-shot at the deployment size, or in training
    fronts = {"s": ("A_s", "SL1", "S2N_L1") if one else ("A_s", "SL", "S2N_L"), "n": ("A_n", "NL1" if one else "NL")}
    fig, axes = plt.subplots(1, len(fams), figsize=(6 * len(fams), 4.5), dpi=120, squeeze=False)
    for ax, fam in zip(axes[0], fams):
        rows = [r for r in table if r["family"] == fam and not r["lever"]]
        for scale, style in (("s", "o-"), ("n", "s-")):  # each scale's front: the base, then pruned ever further
            pts = sorted((r for r in rows if r["row"] in fronts[scale]), key=lambda r: r["onnx_ms"])
            if pts:
                ax.errorbar([r["onnx_ms"] for r in pts], [r["map50_95"] for r in pts],
                            yerr=[r["map50_95_std"] for r in pts], fmt=style, capsize=3,
                            label=f"{fam}{scale}, and pruned to latency targets")  # fmt: skip
            for r in pts:
                cut = r["fraction"] if r["fraction"] is not None else targets[fam]["prune_latency"]
                text = "unpruned" if r["row"].startswith("A_") else f"-{cut:.0%} latency"
                ax.annotate(text, (r["onnx_ms"], r["map50_95"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for r in (r for r in rows if r["row"] == "S2N_G"):
            ax.errorbar(r["onnx_ms"], r["map50_95"], yerr=r["map50_95_std"], fmt="^", capsize=3, label=TITLES["S2N_G"])
        for r in (r for r in rows if r["row"] == "NG"):
            ax.errorbar(r["onnx_ms"], r["map50_95"], yerr=r["map50_95_std"], fmt="v", capsize=3,
                        label=f"{fam}n at -{r['fraction']:.0%} GFLOPs (default recipe)")  # fmt: skip
        for r in (r for r in table if r["family"] == fam and r["lever"]):
            ax.errorbar(r["onnx_ms"], r["map50_95"], yerr=r["map50_95_std"], fmt="o", capsize=3,
                        label=f"{TITLES[r['row']]} ({r['lever']})")  # fmt: skip
        ax.set(xlabel=f"ONNX Runtime CPU ms (imgsz {LAT['imgsz']}, batch 1, 1 thread)", ylabel="val mAP50-95",
               title=f"{fam} on {P['data']}: up-left wins")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bases", default="runs/bases", help="benchmarks/bases.py's --work")
    ap.add_argument("--families", default="yolo11,yolo26")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs of every row")
    ap.add_argument("--fronts", default="0.3,0.7", help="other prune_latency points of the chart (seed 0)")
    ap.add_argument("--cuts", default="0.3", help="GFLOPs fractions of the NG rows (n, default recipe, every seed)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="runs/cross_scale")
    ap.add_argument("--name", default="cross_scale")
    ap.add_argument(
        "--latency-imgsz",
        type=int,
        help="measure latency here (e.g. 640): s one-shot pruned to n's "
        "latency at that size, fine-tuned at 128; every row re-timed at that size",
    )
    ap.add_argument("--rows", help="only these rows, e.g. S2N_L1,A_n (the criterion's two)")
    ap.add_argument("--no-timing", action="store_true", help="skip the final re-timing (a lever screen: mAP only)")
    ap.add_argument(
        "--lever", help="key=value[,key=value]: only the --rows rows (default: S2N_L), with these keys (a recipe lever)"
    )
    args = ap.parse_args()
    only = args.rows.split(",") if args.rows else None
    if only and set(only) - set(TITLES):
        ap.error(f"--rows {args.rows}: accepted rows are {', '.join(TITLES)}")
    if args.lever and only and set(only) & {"SL", "NL", "SL1", "NL1"}:
        ap.error(f"--lever with --rows {args.rows}: the chart's front rows take no lever; accepted: S2N_L, S2N_L1, NG")
    LAT["imgsz"] = args.latency_imgsz or P["imgsz"]
    bases, work = Path(args.bases).resolve(), Path(args.work).resolve()
    fams = args.families.split(",")
    fronts = [float(f) for f in args.fronts.split(",") if f]
    out = {**header(), "epochs": args.epochs, "seeds": args.seeds, "fronts": fronts, "no_timing": args.no_timing}
    targets = {f: n_target(bases, f) for f in fams}
    t0 = time.perf_counter()
    cuts = tuple(float(c) for c in args.cuts.split(",") if c)
    for spec in specs(args.seeds, fronts, args.lever, only, cuts):  # seed by seed across families: a stop keeps seeds
        for fam in fams:
            run_spec(spec, fam, bases, targets[fam], args.epochs, args.device, work)
            out["wall_s"] = round(time.perf_counter() - t0, 1)
    if not args.no_timing:  # --no-timing: a lever screen, judged by mAP alone (the ms columns read nan)
        remeasure(work, fams)
    runs = [json.loads(f.read_text()) for f in sorted(work.glob("*/row.json"))]
    write(args.name, [r for r in runs if r["family"] in fams and r["epochs"] == args.epochs], targets, out)


if __name__ == "__main__":
    main()
