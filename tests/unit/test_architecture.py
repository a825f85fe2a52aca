"""The package's shape: no import cycle between its parts, Ray only where it runs things, the library below
the app (nothing imports the CLI or ``jobs``), and a cheap ``import discover_ray``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "discover_ray"
#: the only parts that may import ray: the pipeline's Ray executor, and training on Ray Train
RAY_PARTS = {"on_ray", "training"}
APP = {"cli"}


def _imports() -> dict[str, set[str]]:
    """module (dotted) → every module it imports, at the top or inside functions."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("discover_ray", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[module] = names
    return found


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "discover_ray" and len(parts) > 1 else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (node → nodes it depends on) as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}}) is None


def test_no_import_cycle_between_the_parts_of_the_package():
    graph: dict[str, set[str]] = {}
    for module, names in _imports().items():
        source = _part(module)
        for name in names:
            target = _part(name)
            if source and target and target != source:
                graph.setdefault(source, set()).add(target)
    assert len(graph) > 15  # every part of the package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_ray_only_in_the_ray_executor_and_training_and_nothing_imports_the_app():
    for module, names in _imports().items():
        part = _part(module)
        uses_ray = {n for n in names if n == "ray" or n.startswith("ray.")}
        assert not uses_ray or part in RAY_PARTS, f"{module} imports {sorted(uses_ray)}"
        assert not any(n == "jobs" or n.startswith("jobs.") for n in names), f"{module} imports jobs/"
        if part not in APP:
            assert "discover_ray.cli" not in names, f"{module} imports the CLI"


def test_importing_the_package_and_dissecting_in_process_never_imports_ray(tmp_path):
    code = (
        "import sys, discover_ray\n"
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)\n"
        "from discover_ray import dissect, load_config, read_labels, build_report, explain_image, compare_runs\n"
        "import discover_ray.dissection, discover_ray.methods, discover_ray.sources, discover_ray.report\n"
        "assert 'ray' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
