"""The package's import rules, read from the source with ``ast`` (docs/architecture.md).

Every import counts, also those inside functions and under ``if __name__ == "__main__":``,
except under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import importlib
import sys
import tomllib
from pathlib import Path

import pytest


PKG = Path(__file__).resolve().parents[1] / "cardigan_tf"
#: modules that are commands (thin CLIs); library code must not import them
COMMANDS = {"train", "evaluate", "generate", "gan_quality", "prepare", "tune", "export", "predict"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _skipped(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and _skipped(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # "from pkg import module"
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m == "cardigan_tf" or m.startswith("cardigan_tf.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imp in _imports(path):
            # resolve "cardigan_tf.x.y.Name" to the longest existing module prefix
            parts = imp.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts:
                targets.add(".".join(parts))
        targets.discard(name)
        graph[name] = targets
    return graph


GRAPH = _graph()


def _group(module: str) -> str:
    """The package of a module (cardigan_tf.data.camus -> data) or the top-level module's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cardigan_tf"


def _is_command(module: str) -> bool:
    parts = module.split(".")
    return (len(parts) == 2 and parts[1] in COMMANDS) or (len(parts) >= 2 and parts[1] == "bench")


def _violations(src_group: str, forbidden: set[str]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if _group(m) == src_group
                  for t in ts if _group(t) in forbidden)


def test_the_graph_is_read():
    assert "cardigan_tf.data.pipeline" in GRAPH and "cardigan_tf.resize" in GRAPH["cardigan_tf.data.pipeline"]
    assert "cardigan_tf.jobs.study" in GRAPH["cardigan_tf.train"]


@pytest.mark.parametrize("group, forbidden", [
    ("models", {"data", "jobs", "configs", "runs", "serving"}),
    ("data", {"models", "jobs", "configs", "runs", "serving", "losses"}),
    ("metrics", {"models", "data", "jobs", "configs", "runs"}),
    ("losses", {"data", "jobs", "configs", "runs"}),
])
def test_layer_rules(group, forbidden):
    assert _violations(group, forbidden) == []


def test_no_library_module_imports_a_command():
    bad = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if not _is_command(m)
                 for t in ts if _is_command(t))
    assert bad == []


def _group_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    groups: dict[str, set[str]] = {}
    for m, ts in graph.items():
        groups.setdefault(_group(m), set()).update(_group(t) for t in ts if _group(t) != _group(m))
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(g):
        state[g] = 1
        stack.append(g)
        for h in sorted(groups.get(g, ())):
            if state.get(h) == 1:
                cycles.append(stack[stack.index(h):] + [h])
            elif h not in state:
                dfs(h)
        stack.pop()
        state[g] = 2

    for g in sorted(groups):
        if g not in state:
            dfs(g)
    return cycles


def test_no_import_cycle_between_packages():
    cycles = _group_cycles(GRAPH)
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_catch_violations(monkeypatch):
    """The checker itself: a data module importing models/, a library module importing a
    command, and a cycle between two packages are all reported."""
    fake = {"cardigan_tf.data.bad": {"cardigan_tf.models.unet"},
            "cardigan_tf.metrics.bad": {"cardigan_tf.evaluate"},
            "cardigan_tf.models.bad": {"cardigan_tf.losses.gan"},
            "cardigan_tf.losses.bad": {"cardigan_tf.models.unet"}}
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", {**GRAPH, **fake})
    assert _violations("data", {"models"}) == ["cardigan_tf.data.bad -> cardigan_tf.models.unet"]
    assert any("models" in c and "losses" in c for c in _group_cycles(GRAPH))
    bad = [f"{m} -> {t}" for m, ts in GRAPH.items() if not _is_command(m) for t in ts if _is_command(t)]
    assert bad == ["cardigan_tf.metrics.bad -> cardigan_tf.evaluate"]


def test_console_scripts_point_at_command_mains():
    scripts = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert "cardigan-train" in scripts
    for name, target in scripts.items():
        module, func = target.split(":")
        assert _is_command(module), name
        assert callable(getattr(importlib.import_module(module), func)), name
