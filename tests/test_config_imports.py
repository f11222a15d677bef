"""Configuration has no import cycle: the parts' settings parsers do not import config.

config.py imports each part's parser (collectors, cost, impact, usermap, analytics,
webconfig) at the top; those import the validator (mlsidecar.section) and never config
back, not even inside a function. Two checks: the import graph read from the source
(every import statement, wherever it is), and real imports in a fresh interpreter.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import mlsidecar

PACKAGE = pathlib.Path(mlsidecar.__file__).parent
PARTS = ("mlsidecar.collectors", "mlsidecar.cost", "mlsidecar.impact", "mlsidecar.usermap",
         "mlsidecar.analytics.settings", "mlsidecar.webconfig")


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the mlsidecar modules it imports (at the top or inside a function)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            found |= {t for t in targets if t in modules}
        graph[name] = found - {name}
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """An import path from start to goal, or None."""
    seen = {start}
    paths = [[start]]
    while paths:
        path = paths.pop()
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == goal:
                return path + [nxt]
            if nxt not in seen:
                seen.add(nxt)
                paths.append(path + [nxt])
    return None


def test_config_is_in_no_import_cycle():
    graph = _import_graph()
    assert "mlsidecar.section" in graph
    assert {m for m in graph["mlsidecar.section"] if m.startswith("mlsidecar")} <= {"mlsidecar"}
    cycles = [path for dep in sorted(graph["mlsidecar.config"])
              if (path := _reaches(graph, dep, "mlsidecar.config")) is not None]
    assert cycles == [], f"config imports these, and they import config back: {cycles}"


def test_every_settings_parser_imports_the_validator_not_config():
    graph = _import_graph()
    for part in PARTS:
        assert "mlsidecar.config" not in graph[part], part
        assert "mlsidecar.section" in graph[part], part


def test_parsing_each_part_in_a_fresh_interpreter_never_imports_config():
    code = (
        "import sys\n"
        "from mlsidecar.section import Section\n"
        "from mlsidecar import collectors, cost, impact, usermap, webconfig\n"
        "from mlsidecar.analytics import settings\n"
        "top = Section('x.toml', '', {'mappings': [{'event': 'e', 'metrics': [{'name': 'n'}]}]})\n"
        "usermap.parse(top, 'mappings')\n"
        "collectors.parse_config(top.table('collectors'))\n"
        "cost.parse(top.table('cost'))\n"
        "impact.parse(top.table('impact'))\n"
        "settings.parse(top.table('analytics'))\n"
        "print('mlsidecar.config' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_errors_and_sections_are_the_validators():
    from mlsidecar import config, section

    assert config.ConfigError is section.ConfigError
    assert config.Section is section.Section


def test_no_module_sets_another_modules_globals():
    """Limits are passed to what uses them (the mapper, the analytics engine), never assigned
    to a module's global (as ``events.MAX_LABEL_LENGTH = ...`` once was)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in imported \
                        and t.attr.isupper():
                    found.append(f"{name}:{node.lineno}: {t.value.id}.{t.attr}")
    assert found == []
