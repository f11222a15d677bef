"""Paths a workload (or whoever can write next to it) can put in the tailer's way: a FIFO in place
of the file, a symlinked directory under a glob, a directory given as a file, a refused symlink,
and secrets inside rejected lines. None may hang the worker, widen what it reads, or flood or
leak into the log."""

import logging
import os
import threading

import pytest

from mlsidecar import config as configmod
from mlsidecar.runtime.ingest import Ingest, make_mapper, make_writer, preview
from mlsidecar.runtime.state import StateDir
from mlsidecar.sources.tail import Tailer, open_regular
from mlsidecar.store import Batch

LINE = b'{"event":"prediction","model":"m","version":"v","latency_s":0.01}\n'


def finishes(fn, seconds: float = 5.0):
    """Run ``fn`` on a thread; fail (instead of hanging the suite) if it does not return."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} still blocked after {seconds} s"
    return out


def test_a_fifo_is_refused_on_the_descriptor_without_blocking(tmp_path):
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    out = finishes(lambda: open_regular(str(fifo)))
    assert isinstance(out.get("error"), OSError) and "not a regular file" in str(out["error"])
    # The tailer's own open (the path a swap between its look and its open takes).
    t = Tailer([str(fifo)], watch="poll")
    assert finishes(lambda: t._open(str(fifo)))["value"] is None
    assert t.files == {}


def test_a_fifo_swapped_in_for_the_tailed_file_does_not_stop_the_tailer(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(LINE)
    t = Tailer([str(path)], watch="poll")
    t.scan()
    assert [len(t.read(tf)) for tf in t.readable()] == [1]
    path.unlink()
    os.mkfifo(path)
    finishes(t.scan)
    finishes(lambda: [t.read(tf) for tf in t.readable()])
    path.unlink()
    path.write_bytes(LINE * 2)
    finishes(t.scan)
    got = sum(len(t.read(tf)) for tf in t.readable())
    assert got == 2


def test_a_wildcard_does_not_follow_a_symlinked_directory(tmp_path, caplog):
    logs, secret = tmp_path / "logs", tmp_path / "secret"
    (logs / "a").mkdir(parents=True)
    secret.mkdir()
    (logs / "a" / "ev.jsonl").write_bytes(LINE)
    (secret / "ev.jsonl").write_bytes(b"root:$6$hash\n")
    (logs / "evil").symlink_to(secret, target_is_directory=True)
    pattern = str(logs / "*" / "ev.jsonl")

    with caplog.at_level(logging.WARNING):
        t = Tailer([pattern], watch="poll")
        for _ in range(3):
            assert t.matched_paths() == [str(logs / "a" / "ev.jsonl")]
    said = [r for r in caplog.records if "symlinked directory" in r.getMessage()]
    assert len(said) == 1 and "sources.follow_symlinked_dirs" in said[0].getMessage()

    # Configured to follow: both directories are read.
    t = Tailer([pattern], watch="poll", follow_symlinked_dirs=True)
    assert t.matched_paths() == sorted([str(logs / "a" / "ev.jsonl"), str(logs / "evil" / "ev.jsonl")])
    # The part before the first wildcard is the user's own path, and may be a link.
    (tmp_path / "link").symlink_to(logs, target_is_directory=True)
    t = Tailer([str(tmp_path / "link" / "*" / "ev.jsonl")], watch="poll")
    assert t.matched_paths() == [str(tmp_path / "link" / "a" / "ev.jsonl")]


def test_the_config_key_reaches_the_tailer_and_is_checked():
    assert configmod.from_dict({}).sources.follow_symlinked_dirs is False
    cfg = configmod.from_dict({"sources": {"follow_symlinked_dirs": True}})
    assert cfg.sources.follow_symlinked_dirs is True
    with pytest.raises(configmod.ConfigError, match="follow_symlinked_dirs"):
        configmod.from_dict({"sources": {"follow_symlinked_dirs": "yes"}})


def test_a_directory_given_as_a_file_is_said_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        t = Tailer([str(tmp_path)], watch="poll")
        for _ in range(3):
            t.scan()
    said = [r.getMessage() for r in caplog.records if "is a directory" in r.getMessage()]
    assert len(said) == 1 and "*.jsonl" in said[0]


def test_a_refused_symlink_is_said_once_not_at_every_scan(tmp_path, caplog):
    real = tmp_path / "real.jsonl"
    real.write_bytes(LINE)
    link = tmp_path / "events.jsonl"
    link.symlink_to(real)
    with caplog.at_level(logging.WARNING):
        t = Tailer([str(link)], watch="poll")
        for _ in range(5):
            t.scan()
            assert t._open(str(link)) is None
    said = [r for r in caplog.records if "cannot open" in r.getMessage()]
    assert len(said) == 1


def test_a_rejected_line_is_logged_as_a_short_escaped_prefix(tmp_path, caplog):
    secret = b"$6$rounds=5000$usesomesillystri$D4IrlXatmP7rx3P3InaxBeoomnAihCKRVQP22JZ6EY47Wc6Kkro"
    bad = b'{"event":"prediction","model":"m","latency_s":"' + secret + b'"}'
    cfg = configmod.with_overrides(configmod.from_dict({}), state_dir=str(tmp_path))
    state = StateDir(str(tmp_path))
    state.create()
    batch = Batch()
    ingest = Ingest(cfg, make_mapper(cfg, batch), batch, make_writer(cfg, state, "tail-x", journal=False))
    with caplog.at_level(logging.WARNING):
        ingest.lines([bad, b"\x00\xff" + secret + b"\n"], "src")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "rejected" in logged and f"({len(bad)} bytes)" in logged
    assert b"usesomesillystri".decode() not in logged
    assert "\\x00\\xff" in logged or "\\x00" in logged  # control bytes escaped, never raw
    assert "\x00" not in logged


def test_preview_keeps_short_lines_whole():
    assert preview(b'{"a":1}') == "b'{\"a\":1}' (7 bytes)"
    assert preview(b"x" * 100) == "b'" + "x" * 32 + "'... (100 bytes)"
