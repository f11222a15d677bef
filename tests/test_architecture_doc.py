"""docs/architecture.md names every module of the package once, and no module that is gone."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"


def modules_in_tree() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "mlsidecar").rglob("*.py")
            if "__pycache__" not in p.parts}


def modules_in_doc() -> list[str]:
    return re.findall(r"^\| `(mlsidecar/[\w/]+\.py)` \| \S", DOC.read_text(), flags=re.M)


def test_every_module_has_its_sentence() -> None:
    missing = modules_in_tree() - set(modules_in_doc())
    assert not missing, f"docs/architecture.md does not say what these are for: {sorted(missing)}"


def test_no_module_listed_that_is_gone_or_listed_twice() -> None:
    listed = modules_in_doc()
    gone = set(listed) - modules_in_tree()
    assert not gone, f"docs/architecture.md lists modules that no longer exist: {sorted(gone)}"
    assert len(listed) == len(set(listed)), "a module is listed twice"
