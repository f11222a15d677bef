"""The status page, rendered by a real browser (headless Chromium): every cell says something."""

from __future__ import annotations

import os
import subprocess
from html.parser import HTMLParser

from tests.harness import require_tool, wait_for

PREDICTION = b'{"event":"prediction","model":"m","version":"v1","latency_s":0.01}\n'


class Table(HTMLParser):
    """The rows of the page's table, as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def browser_dom(url: str, tmp_path) -> str:
    chromium = require_tool("chromium")
    profile = tmp_path / "chromium-profile"
    cmd = [chromium, "--headless", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
           "--dump-dom", url]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0 and "<table" in r.stdout, r.stderr[-2000:]
    return r.stdout


def test_status_page_in_chromium_shows_numbers_for_every_worker(tmp_path, sidecar_factory):
    events = tmp_path / "events.jsonl"
    events.write_bytes(PREDICTION * 3 + b"not json\n")
    sc = sidecar_factory("--tail", str(events), "--collector.host").start()
    sc.wait_value("ml_predictions_total", 3)
    wait_for(lambda: b"3 accepted, 1 rejected" in sc.get("/")[2], what="status page caught up")

    table = Table()
    table.feed(browser_dom(sc.url + "/", tmp_path))
    header, *rows = table.rows
    assert header[:2] == ["worker", "source"], header
    by_worker: dict[str, list[list[str]]] = {}
    for row in rows:
        assert len(row) == len(header), row
        by_worker.setdefault(row[0], []).append(row)
    # No cell is a bare placeholder such as " accepted,  rejected".
    for row in rows:
        assert not any(c.startswith("accepted") or ",  rejected" in c or c == "accepted, rejected"
                       for c in row), row

    tail = next(rs for w, rs in by_worker.items() if w.startswith("tail-"))
    assert any(r[1] == str(events) and r[2] == "4" for r in tail), tail
    assert any("3 accepted, 1 rejected" in " ".join(r) for r in tail), tail

    collect = by_worker["collect"]
    states = {r[1]: r for r in collect}
    assert {"collector host", "collector process"} <= states.keys(), collect
    assert "up" in states["collector host"], states["collector host"]
    # Nothing configured to watch on a host: the page says why, instead of blank numbers.
    assert any(c.startswith(("up", "down")) for c in states["collector process"]), states
