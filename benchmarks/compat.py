"""Run the whole test suite against Ultralytics (and torch-pruning) releases across the range pyproject.toml declares.

Each combination gets its own venv. The venvs see this machine's site-packages (``--system-site-packages``) so torch,
onnxruntime and OpenVINO are not downloaded again; only the package under test is installed into the venv at the
version asked (``--no-deps``), and shadows the machine's copy. Results go to benchmarks/results/compat.{json,md}.
Tests of a feature the release lacks are skipped (``needs`` in tests/conftest.py, the gates in yolo_prune/support.py);
the table counts them.

    python benchmarks/compat.py                      # oldest and newest ultralytics x oldest and newest torch-pruning
    python benchmarks/compat.py --pairs 8.4.8:1.6.0 8.4.76:1.6.1 8.4.77:1.6.1 8.4.190:1.6.1   # chosen pairs
    python benchmarks/compat.py --ultralytics 8.4.190 --torch-pruning 1.6.0 --pytest-args "-x -q"
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import tomllib
import venv
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).parent))
from results_io import RESULTS, header, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def declared_range(package: str) -> SpecifierSet:
    """The version specifier pyproject.toml declares for ``package``."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for d in deps:
        name = re.split(r"[<>=!~ ]", d, maxsplit=1)[0]
        if name.lower() == package.lower():
            return SpecifierSet(d[len(name) :])
    raise SystemExit(f"{package} is not a dependency in pyproject.toml")


def released(package: str) -> list[Version]:
    """Versions the package index serves (``pip index versions``)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", package], capture_output=True, text=True, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("Available versions:"))
    return sorted(Version(v.strip()) for v in line.split(":", 1)[1].split(","))


def ends_of_range(package: str) -> list[str]:
    """Oldest and newest released version inside the declared range (one if they coincide)."""
    inside = [v for v in released(package) if v in declared_range(package)]
    if not inside:
        raise SystemExit(f"no released {package} satisfies {declared_range(package)}")
    return sorted({str(inside[0]), str(inside[-1])}, key=Version)


def run_suite(ultralytics: str, torch_pruning: str, pytest_args: list[str], work: Path) -> dict:
    """Install the two versions into a fresh venv and run pytest there; returns counts, time and exit status."""
    env_dir = work / f"venv-ul{ultralytics}-tp{torch_pruning}"
    venv.EnvBuilder(system_site_packages=True, clear=True, with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    pins = [f"ultralytics=={ultralytics}", f"torch-pruning=={torch_pruning}"]
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", *pins], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
    got = subprocess.run(
        [py, "-c", "from importlib.metadata import version as v; print(v('ultralytics'), v('torch-pruning'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    t0 = time.time()
    r = subprocess.run([py, "-m", "pytest", *pytest_args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - t0
    (work / f"pytest-ul{ultralytics}-tp{torch_pruning}.log").write_text(r.stdout + r.stderr)  # which tests failed
    tail = [x for x in r.stdout.splitlines() if x.strip()][-1:] or [""]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", tail[0])}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit.strip(),
        "ultralytics": got[0],
        "torch_pruning": got[1],
        "exit_code": r.returncode,
        "summary": tail[0].strip("= "),
        **counts,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ultralytics", nargs="*", help="versions (default: oldest and newest in the declared range)")
    ap.add_argument("--torch-pruning", nargs="*", help="versions (default: oldest and newest in the declared range)")
    ap.add_argument("--pytest-args", default="-q -p no:cacheprovider", help="arguments for pytest, as one string")
    ap.add_argument("--pairs", nargs="*", help="ultralytics:torch-pruning pairs to run instead of the cross product")
    ap.add_argument("--work", default="/tmp/yolo-prune-compat", help="where the venvs go")
    ap.add_argument("--keep", action="store_true", help="keep compat.json's other rows (re-run some pairs only)")
    a = ap.parse_args()
    if a.pairs:
        pairs = [tuple(p.split(":")) for p in a.pairs]
    else:
        uls = a.ultralytics or ends_of_range("ultralytics")
        tps = a.torch_pruning or ends_of_range("torch-pruning")
        pairs = [(ul, tp) for ul in uls for tp in tps]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for ul, tp in pairs:
        print(f"ultralytics {ul} + torch-pruning {tp} ...", flush=True)
        rows.append(run_suite(ul, tp, a.pytest_args.split() + [f"--basetemp={work / f'tmp-{ul}-{tp}'}"], work))
        print(f"  {rows[-1]['summary']} in {rows[-1]['seconds']:.0f}s", flush=True)
    if a.keep and (RESULTS / "compat.json").is_file():  # the rows of an earlier run for the pairs not run now
        ran = {(r["ultralytics"], r["torch_pruning"]) for r in rows}
        old = json.loads((RESULTS / "compat.json").read_text()).get("rows", [])
        rows = [r for r in old if (r["ultralytics"], r["torch_pruning"]) not in ran] + rows
        rows.sort(key=lambda r: (Version(r["ultralytics"]), Version(r["torch_pruning"])))
    lines = [
        f"Declared: ultralytics{declared_range('ultralytics')}, torch-pruning{declared_range('torch-pruning')}",
        "",
        "| ultralytics | torch-pruning | result | seconds | run |",
        "|---|---|---|---|---|",
        *(f"| {r['ultralytics']} | {r['torch_pruning']} | {r['summary']} | {r['seconds']:.0f} | {r.get('date', '')} "
          f"{r.get('commit', '')} |" for r in rows),
    ]
    save("compat", {**header(), "rows": rows}, lines)
    sys.exit(max(r["exit_code"] for r in rows))


if __name__ == "__main__":
    main()
