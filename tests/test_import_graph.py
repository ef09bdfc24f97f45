"""No import cycle among the first-party modules (``cvd_scene/``, ``cvd/``): a library module never imports the
stage runner that uses it, and no import hides inside a function to dodge a cycle (imports inside functions and
``TYPE_CHECKING`` blocks count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cvd_scene", "cvd")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(files: dict[str, str], module_level_only: bool = False) -> dict[str, set[str]]:
    """``{module: first-party modules it imports}`` from ``{module: source}``. A module's own parent packages are
    left out (Python initialises them first whatever the module imports)."""
    graph: dict[str, set[str]] = {}
    for mod, source in files.items():
        tree = ast.parse(source)
        is_package = mod in {m.rsplit(".", 1)[0] for m in files if "." in m}
        nodes = tree.body if module_level_only else ast.walk(tree)
        deps: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".") if is_package else mod.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            deps.update(n for n in names if n in files and n != mod and not mod.startswith(n + "."))
        graph[mod] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def first_party_sources() -> dict[str, str]:
    return {
        _module_name(p, REPO): p.read_text(encoding="utf-8") for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
    }


def test_the_checker_finds_cycles_through_functions_and_relative_imports():
    files = {
        "pkg": "",
        "pkg.stage": "from pkg.lib_config import Config\ndef run():\n    from pkg.lib import work\n",
        "pkg.lib": "from pkg.stage import Config\n",
        "pkg.lib_config": "class Config: ...\n",
        "pkg.a": "from . import b\n",
        "pkg.b": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.a import X\n",
    }
    assert find_cycle(import_graph(files)) == ["pkg.a", "pkg.b", "pkg.a"]
    files["pkg.b"] = "import typing\n"
    assert find_cycle(import_graph(files)) == ["pkg.lib", "pkg.stage", "pkg.lib"]
    assert find_cycle(import_graph(files, module_level_only=True)) is None  # the function-level import hides it
    files["pkg.lib"] = "from pkg.lib_config import Config\n"  # the config in its own module: no cycle
    assert find_cycle(import_graph(files)) is None


@pytest.mark.parametrize("module_level_only", [True, False], ids=["module-level", "every-import"])
def test_first_party_imports_have_no_cycle(module_level_only):
    graph = import_graph(first_party_sources(), module_level_only)
    assert len(graph) > 50 and "cvd_scene.cameras" in graph["cvd_scene.register.registration"]  # the walk sees the code
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


STAGES = ("plan", "generate", "register", "fit", "export", "evaluate")


def test_library_modules_import_no_stage_runner():
    """A stage's runner (``cvd_scene.<stage>.run``) is imported by :mod:`cvd_scene.runners` (and a command that
    needs one of its helpers) only; library code takes its config from the stage's ``config`` module."""
    runners = {f"cvd_scene.{s}.run" for s in STAGES}
    graph = import_graph(first_party_sources())
    assert runners <= set(graph) and runners <= graph["cvd_scene.runners"]
    offenders = sorted(
        f"{m} imports {d}"
        for m, deps in graph.items()
        if m != "cvd_scene.runners" and not m.startswith("cvd_scene.commands")
        for d in deps
        if d in runners
    )
    assert not offenders, offenders


def test_each_stage_is_a_package_with_config_and_run():
    for stage in STAGES:
        for part in ("__init__", "config", "run"):
            assert (REPO / "cvd_scene" / stage / f"{part}.py").is_file(), f"cvd_scene/{stage}/{part}.py"


def test_the_command_line_imports_its_commands_by_name():
    """No importlib: every command module appears in the import graph of :mod:`cvd_scene.cli`."""
    graph = import_graph(first_party_sources())
    commands = {m for m in graph if m.startswith("cvd_scene.commands.") and m != "cvd_scene.commands.common"}
    assert commands and commands <= graph["cvd_scene.cli"]
    assert "importlib" not in (REPO / "cvd_scene" / "cli.py").read_text()


@pytest.mark.parametrize(
    ("library", "home"),
    [("pycolmap", ("cvd_scene.register.colmap",)), ("nerfstudio", ("cvd_scene.fit.",))],
)
def test_a_heavy_library_is_imported_in_its_one_home_only(library, home):
    """pycolmap only through ``register/colmap.py``, nerfstudio only inside ``fit/`` (every import counts, also
    inside functions), so each has one place that speaks its types."""
    offenders = []
    for mod, source in first_party_sources().items():
        for node in ast.walk(ast.parse(source)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])  # fmt: skip
            if any(n == library or n.startswith(library + ".") for n in names) and not mod.startswith(home):
                offenders.append(mod)
    assert not offenders, f"{library} imported outside {home}: {sorted(set(offenders))}"
