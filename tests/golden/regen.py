"""Write the golden files again: ``python -m tests.golden.regen`` (from the repository root).

Run it only when a change to /metrics is intended, and commit the new files with that
change; the golden test never writes them itself (in CI or anywhere).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.golden.build import OPENMETRICS_GOLDEN, TEXT_GOLDEN, build, scrape


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        text, openmetrics = scrape(build(Path(tmp)))
    TEXT_GOLDEN.write_bytes(text)
    OPENMETRICS_GOLDEN.write_bytes(openmetrics)
    print(f"wrote {TEXT_GOLDEN} ({len(text)} bytes) and {OPENMETRICS_GOLDEN} ({len(openmetrics)} bytes)")


if __name__ == "__main__":
    main()
