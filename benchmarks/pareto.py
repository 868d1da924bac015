"""Issue #21's chart: mAP50-95 against measured latency (ONNX Runtime, 640 px, 1 thread), from kept cross_scale runs.

Usage:
  python benchmarks/pareto.py --results cross_scale_640_v2,cross_scale_640 --work /tmp/bench/cross2 \
      --bases /tmp/bench/bases --name cross_scale_front

Every point's x is its latency as a fraction of its family's unpruned s, shown in ms on one scale: that fraction
times s's time in the target measurement (n and s interleaved at 1 thread, 3 passes; the one every s-to-n run pruned
to). Where a fraction comes from, best first:
  target       A_s: 1; A_n: n's measured fraction of s (the target itself)
  closed loop  the run's own ``prune_latency`` closed loop: the pruned model timed interleaved with its base
  timed here   a run in ``--work`` with its best.pt: exported and timed now, interleaved with its base, 3 passes,
               denormals flushed (see ``time_here``; the closed loops ran without that)
  same pass    its results file's final re-timing, against its base's rows in the same pass (those passes ran on
               a loaded machine: the ratio holds better than the ms, but read these points as the noisiest)
A fine-tuned run keeps its pruned architecture, so its base-relative latency is the one-shot's. Runs are keyed by
(family, row, fraction, lever, epochs, seed); the first ``--results`` file that lists a run wins, ``--work`` adds the
rest. Files of different dates may hold different planner versions: the table names each point's file.
Results: ``benchmarks/results/<name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from results_io import RESULTS, header, save

MS = "onnx_ms_640"
BASE = {"s": "A_s", "n": "A_n"}
FRONTS = {"s": ("A_s", "SL1", "S2N_L1"), "n": ("A_n", "NL1")}  # each scale's line: the base, then ever faster
LABEL = {"A_s": "s trained on", "A_n": "n trained on", "SL1": "s at a latency target", "NL1": "n at a latency target",
         "S2N_L1": "s pruned to n's latency", "S2N_G": "s pruned to n's GFLOPs",
         "NG": "n pruned by GFLOPs"}  # fmt: skip


def key(r: dict) -> tuple:
    """What makes two results the same run."""
    return r["family"], r["row"], r["fraction"], r.get("lever"), r["epochs"], r["seed"]


def collect(names: list[str], work: Path | None) -> tuple[dict, list[tuple[dict, list[dict]]]]:
    """The targets (of the first file) and each run with the runs of the file it came from (for the same pass)."""
    targets, seen, out = None, set(), []
    for name in names:
        data = json.loads((RESULTS / f"{name}.json").read_text())
        targets = targets or data["targets"]
        for fam in set(targets) & set(data["targets"]):  # one x scale: every file's runs pruned to the same targets
            if data["targets"][fam]["latency_ratio"] != targets[fam]["latency_ratio"]:
                raise SystemExit(f"--results: {name} has other {fam} targets than {names[0]}")
        for r in data["runs"]:
            if key(r) not in seen and "refused" not in r:
                seen.add(key(r))
                out.append((r | {"from": name}, data["runs"]))
    for f in sorted(work.glob("*/row.json")) if work else ():
        r = json.loads(f.read_text())
        if key(r) not in seen and "refused" not in r:
            seen.add(key(r))
            out.append((r | {"dir": str(f.parent), "from": "--work"}, []))
    skip = [r["name"] for r, _ in out if r["family"] not in targets or r["row"] not in LABEL]
    for name in skip:
        print(f"pareto: {name} left out (no target for its family, or a row at the training size)")
    return targets, [(r, same) for r, same in out if r["name"] not in skip]


def time_here(runs: list[dict], bases: Path, runs_per_pass: int = 100) -> dict[str, float]:
    """Run name -> its latency over its base's: best.pt exported to ONNX at 640 and timed interleaved with the base at
    1 thread, the median of 3 passes' ratios (a pass is one load; the ratio within it is what holds).

    Denormal floats are flushed to zero while timing (``time_interleaved`` does it, as all of yolo-prune's timing
    does): two yolo26n runs of one pruned architecture (the same ONNX graph,
    other weights) timed 0.66-0.69 and 0.85-0.90 of the base on the random input without it, both 0.68-0.76 with it
    (``benchmarks/results/denormals.md``). At 1 thread ONNX Runtime computes on the calling thread; torch's flag sets
    that thread's.
    """
    from ultralytics import YOLO

    from yolo_prune.engine.runtime import exported_runner, time_interleaved

    def runner(pt: Path):
        return exported_runner(YOLO(str(pt)).export(format="onnx", imgsz=640, simplify=True), "onnx", 1, 640)

    out = {}
    for fam, scale in sorted({(r["family"], r["scale"]) for r in runs}):
        group = [r for r in runs if (r["family"], r["scale"]) == (fam, scale)]
        fns = {"base": runner(bases / f"{fam}{scale}_base" / "weights" / "best.pt")}
        fns |= {r["name"]: runner(Path(r["dir"]) / "weights" / "best.pt") for r in group}
        passes = [time_interleaved(fns, runs_per_pass, cpu=True) for _ in range(3)]  # denormals flushed
        for r in group:
            out[r["name"]] = statistics.median(p[r["name"]]["median_ms"] / p["base"]["median_ms"] for p in passes)
    return out


def fraction(r: dict, same: list[dict], target: dict, timed: dict) -> tuple[float | None, str]:
    """The run's latency as a fraction of the unpruned s, and where it comes from (see the module docstring)."""
    base = 1.0 if r["scale"] == "s" else target["latency_ratio"]
    if r["row"] in BASE.values():
        return base, "target"
    if speedup := (r.get("oneshot") or {}).get("measured_speedup"):
        return base / speedup, "closed loop"
    if r["name"] in timed:
        return base * timed[r["name"]], "timed here"
    ref = [x[MS] for x in same if (x["family"], x["row"]) == (r["family"], BASE[r["scale"]]) and MS in x]
    if MS in r and ref:
        return base * r[MS] / statistics.mean(ref), "same pass"
    return None, "not timed"


def table(points: list[dict], targets: dict) -> list[dict]:
    """One row per (family, row, fraction, lever): mAP50-95 mean/std over seeds, mean latency fraction and its ms."""
    groups: dict[tuple, list[dict]] = {}
    for p in (p for p in points if p["latency"] is not None):
        groups.setdefault(key(p)[:4], []).append(p)
    out = []
    for (fam, row, frac, lever), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], -statistics.mean(
            p["latency"] for p in kv[1]))):  # fmt: skip
        maps, lat = [p["map50_95"] for p in ps], statistics.mean(p["latency"] for p in ps)
        out.append({"family": fam, "row": row, "fraction": frac, "lever": lever, "seeds": len(ps),
                    "map50_95": round(statistics.mean(maps), 4),
                    "map50_95_std": round(statistics.stdev(maps), 4) if len(maps) > 1 else 0.0,
                    "latency_vs_s": round(lat, 3), "ms": round(lat * statistics.median(targets[fam]["ms"]["s"]), 1),
                    "reached": ps[0]["reached"], "source": ", ".join(sorted({p["source"] for p in ps})),
                    "from": ", ".join(sorted({p["from"] for p in ps}))})  # fmt: skip
    return out


def chart(rows: list[dict], name: str) -> None:
    """One panel per family: the s and n fronts as lines, the GFLOPs-pruned and lever rows as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = sorted({r["family"] for r in rows})
    fig, axes = plt.subplots(1, len(fams), figsize=(6.5 * len(fams), 4.8), dpi=120, squeeze=False)
    for ax, fam in zip(axes[0], fams):
        mine = [r for r in rows if r["family"] == fam]
        for scale, style in (("s", "o-"), ("n", "s-")):
            pts = sorted((r for r in mine if r["row"] in FRONTS[scale] and not r["lever"]), key=lambda r: r["ms"])
            ax.errorbar([r["ms"] for r in pts], [r["map50_95"] for r in pts], yerr=[r["map50_95_std"] for r in pts],
                        fmt=style, capsize=3,
                        label=f"{fam}{scale}: unpruned, then pruned to latency targets")  # fmt: skip
        for r in (r for r in mine if r["row"] not in FRONTS["s"] + FRONTS["n"] or r["lever"]):
            cut = f" -{r['fraction']:.0%}" if r["fraction"] else ""
            ax.errorbar(r["ms"], r["map50_95"], yerr=r["map50_95_std"], fmt="v" if r["row"] == "NG" else "^",
                        capsize=3, mfc="none" if r["lever"] else None,
                        label=f"{fam}{LABEL[r['row']]}{cut}"
                        + (f" ({r['lever']})" if r["lever"] else ""))  # fmt: skip
        for r in mine:
            text = f"{r['seeds']} seed{'s' * (r['seeds'] > 1)}" + (", same pass" if "same pass" in r["source"] else "")
            ax.annotate(text, (r["ms"], r["map50_95"]), textcoords="offset points", xytext=(4, -10), fontsize=6)
        ax.set(xlabel="ONNX Runtime CPU ms (imgsz 640, batch 1, 1 thread; one scale, see the .md)",
               ylabel="val mAP50-95 (shapes-500, 128 px)", title=f"{fam}: up-left wins")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="cross_scale_640_v2,cross_scale_640", help="results files, first wins")
    ap.add_argument(
        "--work", help="cross_scale.py's --work: runs no results file lists, timed here if they have weights"
    )
    ap.add_argument("--bases", default="runs/bases", help="benchmarks/bases.py's --work (the bases to time against)")
    ap.add_argument("--name", default="cross_scale_front")
    args = ap.parse_args()
    targets, runs = collect(args.results.split(","), Path(args.work) if args.work else None)
    todo = [r for r, _ in runs if "dir" in r and r["row"] not in BASE.values() and not (r.get("oneshot") or {})
            .get("measured_speedup") and (Path(r["dir"]) / "weights" / "best.pt").exists()]  # fmt: skip
    timed = time_here(todo, Path(args.bases)) if todo else {}
    points = []
    for r, same in runs:
        lat, src = fraction(r, same, targets[r["family"]], timed)
        points.append({**{k: r.get(k) for k in ("name", "family", "row", "scale", "fraction", "lever", "epochs",
                                                "seed", "reached", "from")},
                       "map50_95": r["map50_95"], "latency": lat, "source": src})  # fmt: skip
    rows = table(points, targets)
    body = ["Latency: each point's fraction of its family's unpruned s, times s's ms in the target measurement ("
            + ", ".join(f"{f}: s {statistics.median(t['ms']['s']):.1f} ms, n {t['latency_ratio']:.3f} of it"
                        for f, t in targets.items()) + "). Sources: see benchmarks/pareto.py.", "",
            "| family | row | cut | lever | seeds | mAP50-95 | latency / s | ms | latency from | results |",
            "|---|---|---:|---|---:|---:|---:|---:|---|---|"]  # fmt: skip

    def cut(r: dict) -> str:
        if r["fraction"] is None:
            return ""
        return f"{r['fraction']:.0%}" + (f" (ran at {r['reached']:.0%}: out of reach)" if r["reached"] else "")

    body += [f"| {r['family']} | {LABEL[r['row']]} | {cut(r)} | "
             f"{r['lever'] or ''} | {r['seeds']} | {r['map50_95']:.4f} +/- {r['map50_95_std']:.4f} | "
             f"{r['latency_vs_s']:.3f} | {r['ms']:.1f} | {r['source']} | {r['from']} |" for r in rows]  # fmt: skip
    body += ["", *(f"Not timed: {p['name']}" for p in points if p["latency"] is None)]
    save(args.name, {**header(), "results": args.results, "targets": targets, "table": rows, "points": points}, body)
    chart(rows, args.name)


if __name__ == "__main__":
    main()
