"""The layout holds: no import cycle, imports point down the layers, one-shot pulls in no trainer, the generated help
and key reference match the config, and size limits that keep modules readable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PKG = ROOT / "yolo_prune"
# lower layers first; a module may import its own layer and the ones before it
FOUNDATION = ("cfg", "checkpoint", "datasets", "inputs", "support", "assets")
LAYERS = [FOUNDATION, ("engine",), ("train",), ("deploy",), ("modes",), ("cli",)]


def _module(path: Path, root: Path, package: str) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str, local: set[str] | None = None) -> dict[str, set[str]]:
    """module -> the modules of ``package`` (or the ``local`` top-level names) it imports, anywhere in the file."""
    files = {_module(p, root, package): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                cands = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            else:
                continue
            for c in cands:
                if local is not None:
                    c = c.split(".")[0]
                    if c in local and c != name:
                        deps.add(c)
                elif c in files and c != name:
                    deps.add(c)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first walk (each as the path that closes it)."""
    found, state = [], {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                found.append(path[path.index(d) :] + [d] if d in path else [n, d])
            elif d not in state:
                visit(d, [*path, d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next((i for i, names in enumerate(LAYERS) if top in names), -1)


def test_every_module_has_a_layer():
    assert [m for m in import_graph(PKG, "yolo_prune") if m != "yolo_prune" and layer(m) < 0] == ["yolo_prune.__main__"]


def test_no_import_cycle_in_the_package():
    graph = import_graph(PKG, "yolo_prune")
    assert len(graph) > 30  # the walk found the modules
    assert "yolo_prune.engine.pruner" in graph["yolo_prune.engine.targets"]  # and their imports
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_imports_point_down_the_layers():
    up = [
        (m, d)
        for m, deps in import_graph(PKG, "yolo_prune").items()
        for d in deps
        if layer(m) >= 0 and layer(d) > layer(m)
    ]
    assert up == []


def test_no_import_cycle_in_benchmarks():
    bench = ROOT / "benchmarks"
    graph = import_graph(bench, "benchmarks", local={p.stem for p in bench.glob("*.py")})
    graph = {k.split(".")[-1]: v for k, v in graph.items()}
    assert "results_io" in graph["accuracy"] and cycles(graph) == []


def test_one_shot_imports_no_trainer():
    code = (
        "import sys, yolo_prune.modes.oneshot; "
        "print(sorted(m for m in sys.modules if m.startswith('yolo_prune.train.')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "['yolo_prune.train.schedule', 'yolo_prune.train.state']"  # no trainer, no callbacks


def test_size_limits():
    """PruneCallbacks at most 150 lines, no module over 400, no function over 60."""
    too_long = []
    for path in PKG.rglob("*.py"):
        src = path.read_text()
        if src.count("\n") > 400:
            too_long.append(f"{path.name}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{path.name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
            if isinstance(node, ast.ClassDef) and node.name == "PruneCallbacks":
                assert node.end_lineno - node.lineno + 1 <= 150
    assert too_long == []


def test_help_and_key_reference_follow_the_config():
    from yolo_prune import cfg
    from yolo_prune.cli import help_text as cli_help
    from yolo_prune.engine.importance import IMPORTANCES

    assert [f.name for f in cfg.PruneConfig.__dataclass_fields__.values()] == list(cfg.KEYS)
    assert set(IMPORTANCES) == set(cfg.METHODS)
    doc = (ROOT / "docs" / "reference" / "keys.md").read_text()
    body = doc.split("<!-- KEYS:BEGIN -->\n")[1].split("\n<!-- KEYS:END -->")[0]
    assert body == cfg.markdown_reference(), "docs/reference/keys.md drifted: python -m yolo_prune.cfg"
    help_text = cli_help()
    for k, key in cfg.KEYS.items():
        assert k in help_text and key.accepts in help_text and k in body


def test_help_is_printed_by_the_command(capsys):
    from yolo_prune.cli import entrypoint
    from yolo_prune.cli import help_text as cli_help

    assert entrypoint(["help"]) == 0
    assert capsys.readouterr().out.strip() == cli_help().strip()


@pytest.mark.parametrize("mode", ["train", "prune"])
def test_config_rejects_the_other_modes_keys(mode):
    from yolo_prune.cfg import PruneConfig, PruneError

    other = "prune_ratio" if mode == "train" else "prune_steps"
    with pytest.raises(PruneError, match=f"{other} is for"):
        PruneConfig.from_keys({other: 0.5 if mode == "train" else 2}, mode)


def test_docs_build_strict(tmp_path):
    """``mkdocs build --strict`` (MkDocs + Material, the dev extra): a broken link or anchor fails here, in CI."""
    env = {**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "keys" / "index.html").is_file()
