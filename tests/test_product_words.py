"""Product text speaks to users: no word of how the project was made in docs, code, config or test names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Prose users read: no "seed" at all.
PROSE = [ROOT / "README.md", ROOT / "config.example.toml", *sorted((ROOT / "docs").glob("*.md")),
         *sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file() and p.suffix in
                 (".md", ".yml", ".yaml", ".json", ".toml", ".py")),
         *sorted((ROOT / "systemd").glob("*.service")), ROOT / "Dockerfile"]
WORD = re.compile(r"\bseed(ed|'s|s)?\b", re.I)
# Code: a random generator's seed is a programming term; "the seed's ..." is not.
CODE_PHRASE = re.compile(r"\bthe seed\b|\bseed's\b", re.I)


def test_prose_speaks_to_users():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in PROSE
            for i, line in enumerate(p.read_text().splitlines(), 1) if WORD.search(line)]
    assert not hits, "\n".join(hits)


def test_code_comments_speak_to_users():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "mlsidecar").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if CODE_PHRASE.search(line)]
    assert not hits, hits


def test_no_test_is_named_after_it():
    names = []
    for p in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and "seed" in node.name.lower():
                names.append(f"{p.name}::{node.name}")
    assert not names, names
