"""Plans before and after a refactor: the exact channels every prune removes, for a fixed set of cases.

Usage:
  python benchmarks/plan_identity.py --save /tmp/plans_before.json     # on the old code
  python benchmarks/plan_identity.py --check /tmp/plans_before.json    # on the new code: identical, or what differs

Cases: yolov8n, yolo11n and yolo26n at ``prune=0.5`` and at ``prune_latency=0.5`` (ONNX Runtime, from a fixed
latency table: every conv timed by a formula of its shape, so the table is the same on any machine and under any
load), and one training run of yolo11n with 2 prune steps. What is compared is every call torch-pruning gets to
remove channels (root layer name and indices), recorded at ``DependencyGraph.get_pruning_group``, the one place any
plan reaches the graph, so the recording does not depend on how yolo-prune's own modules are laid out.
Writes ``benchmarks/results/plan_identity.{json,md}`` with ``--check``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

import torch_pruning as tp

from results_io import header, save

CALLS: list = []


def _record(orig):
    def get_pruning_group(self, module, pruning_fn, idxs):
        CALLS.append([self._module2name.get(module, "?"), sorted(int(i) for i in idxs)])
        return orig(self, module, pruning_fn, idxs)

    return get_pruning_group


tp.DependencyGraph.get_pruning_group = _record(tp.DependencyGraph.get_pruning_group)


def fake_time(sig, rt) -> float:
    """A deterministic 'measurement' of one conv: its multiply-adds, plus a per-call cost."""
    cin, cout, k, s, p, g, d, h, w, act, batch = sig
    return 0.01 + cin // g * cout * k * k * (h // s) * (w // s) * batch * 1e-8


def _latency_api():
    try:  # after the restructure
        from yolo_prune.engine import latency as lat
        from yolo_prune.engine.targets import plan_for_latency
    except ImportError:  # before it
        from yolo_prune import latency as lat
        from yolo_prune.engine import plan_for_latency
    return lat, plan_for_latency


def cases() -> dict[str, list]:
    from ultralytics import YOLO

    from yolo_prune import prune_model

    lat, plan_for_latency = _latency_api()
    import torch

    out = {}
    for family in ("yolov8n", "yolo11n", "yolo26n"):
        CALLS.clear()
        torch.manual_seed(0)  # the yamls build randomly initialised models: the same weights in every run
        prune_model(YOLO(f"{family}.yaml").model, prune=0.5, imgsz=640)
        out[f"{family} prune=0.5"] = list(CALLS)

        lat.time_conv = fake_time
        lat.time_convs = lambda sigs, rt: ((sig, fake_time(sig, rt)) for sig in sigs)  # 0.2.0+: the table times these
        lat.call_overhead_ms = lambda rt: 0.005
        torch.manual_seed(0)
        model = YOLO(f"{family}.yaml").model
        rt = lat.Runtime("onnxruntime", "cpu", 1, 1, 320)
        try:
            from yolo_prune.engine.graph import prepare_model
        except ImportError:
            from yolo_prune.graph import prepare_model
        prepare_model(model)
        table = lat.LatencyTable(lat.conv_units(model, rt.imgsz), rt, 16)
        units_ms = sum(fake_time(u.sig(u.cin, u.cout, 1), rt) - 0.005 for u in table.units)
        table.build(lambda: units_ms * 1.25)  # the 'whole model': its convs plus a fixed quarter
        CALLS.clear()
        plan, _ = plan_for_latency(model, 0.5, rt, table=table, measure=False)
        out[f"{family} prune_latency=0.5 plan"] = plan.groups
    return out


def training_case() -> list:
    from ultralytics import YOLO

    from yolo_prune import add_pruning

    CALLS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        add_pruning(YOLO("yolo11n.yaml"), prune=0.5, prune_steps=2, prune_start=0, prune_end=1).train(
            data="shapes-16", epochs=2, imgsz=64, batch=8, workers=0, seed=0, deterministic=True, plots=False,
            val=False, project=tmp, name="t", verbose=False,
        )  # fmt: skip
    # the live model and the EMA each get the plan: keep the calls as they were made
    return list(CALLS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save")
    ap.add_argument("--check")
    args = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ["YOLO_PRUNE_CACHE"] = tempfile.mkdtemp()  # a fresh latency table: never the user's cache
    got = cases()
    got["yolo11n train 2 steps"] = training_case()
    digest = {k: hashlib.sha1(json.dumps(v).encode()).hexdigest()[:12] for k, v in got.items()}
    if args.save:
        with open(args.save, "w") as f:
            json.dump(got, f)
    for k, h in digest.items():
        print(f"{k:<36} {h}")
    if args.check:
        with open(args.check) as f:
            want = json.load(f)
        want = {k: json.loads(json.dumps(v)) for k, v in want.items()}
        got = json.loads(json.dumps(got))
        same = {k: want.get(k) == v for k, v in got.items()}
        body = ["| case | plan digest | identical to --check file |", "|---|---|---|"]
        body += [f"| {k} | `{digest[k]}` | {'yes' if same[k] else 'NO'} |" for k in got]
        save("plan_identity", {**header(), "digest": digest, "identical": same}, body)
        sys.exit(0 if all(same.values()) else 1)


if __name__ == "__main__":
    main()
