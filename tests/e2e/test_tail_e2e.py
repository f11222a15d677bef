"""Tailing that never loses and never double-counts: real logrotate, real signals, real files."""

import os
import random
import subprocess
import threading
import time

import orjson
import pytest

from tests.harness import require_tool, total, wait_for


def line(i: int) -> bytes:
    return orjson.dumps({"event": "prediction", "model": "m", "latency_s": 0.001, "seq": i}) + b"\n"


class Writer(threading.Thread):
    """Appends numbered events, reopening the file for each small batch (as a workload that
    opens its log per write, or reopens it after logrotate's postrotate signal, does)."""

    def __init__(self, path, total_lines, batch=50, pause=0.002):
        super().__init__(daemon=True)
        self.path, self.total, self.batch, self.pause = path, total_lines, batch, pause
        self.written = 0

    def run(self):
        deadline = time.monotonic() + 60
        while self.written < self.total and time.monotonic() < deadline:
            n = min(self.batch, self.total - self.written)
            with open(self.path, "ab") as fh:
                fh.write(b"".join(line(self.written + k) for k in range(n)))
            self.written += n
            time.sleep(self.pause)


def logrotate(tmp_path, path, mode):
    conf = tmp_path / f"logrotate-{mode}.conf"
    conf.write_text(f"{path} {{\n  rotate 20\n  missingok\n  nocompress\n  {mode}\n}}\n")
    subprocess.run([require_tool("logrotate"), "-f", "-s", str(tmp_path / "lr.state"), str(conf)],
                   check=True, capture_output=True)


@pytest.mark.parametrize("watch", ["auto", "poll"])
def test_logrotate_create_mode_loses_nothing(tmp_path, sidecar_factory, watch):
    require_tool("logrotate")
    log = tmp_path / "app.jsonl"
    log.touch()
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sources]\npoll_interval = 0.1\n")  # rotations are 0.3 s apart here
    sc = sidecar_factory("--tail", str(log), "--watch", watch, config=str(cfg)).start()
    w = Writer(log, 20_000)
    w.start()
    for _ in range(4):
        time.sleep(0.3)
        logrotate(tmp_path, log, "create")
    w.join()
    assert w.written == 20_000
    s = sc.wait_value("ml_predictions_total", 20_000, timeout=40)
    assert total(s, "mlsidecar_events_rejected_total") == 0
    assert (tmp_path / "app.jsonl.1").exists()


def test_logrotate_copytruncate_never_double_counts(tmp_path, sidecar_factory):
    require_tool("logrotate")
    log = tmp_path / "app.jsonl"
    log.touch()
    sc = sidecar_factory("--tail", str(log)).start()
    w = Writer(log, 20_000)
    w.start()
    for _ in range(4):
        time.sleep(0.3)
        logrotate(tmp_path, log, "copytruncate")
    w.join()
    # Everything in the live file is read; lines caught in logrotate's copy window may be lost.
    wait_for(lambda: total(sc.scrape(), "mlsidecar_source_bytes_behind") == 0, 40, what="caught up")
    time.sleep(1.0)
    counted = total(sc.scrape(), "ml_predictions_total")
    assert counted <= 20_000
    assert counted >= 20_000 * 0.9, f"lost {20_000 - counted} lines: more than the copy window explains"
    # What was not read yet at the truncate is finished from logrotate's copy.
    assert "reading the rest from logrotate's copy" in sc.log() or counted == 20_000


def test_delete_recreate_and_truncate_in_place(tmp_path, sidecar_factory):
    log = tmp_path / "app.jsonl"
    log.write_bytes(b"".join(line(i) for i in range(100)))
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", 100)
    log.unlink()
    log.write_bytes(b"".join(line(i) for i in range(30)))
    sc.wait_value("ml_predictions_total", 130)
    with open(log, "r+b") as fh:
        fh.truncate(0)
    with open(log, "ab") as fh:
        fh.write(b"".join(line(i) for i in range(5)))
    sc.wait_value("ml_predictions_total", 135)


def test_globs_pick_up_new_files_and_skip_rotated_siblings(tmp_path, sidecar_factory):
    d = tmp_path / "logs"
    d.mkdir()
    (d / "a.jsonl").write_bytes(line(1))
    (d / "a.jsonl.1").write_bytes(line(2) * 7)  # a rotated sibling: not matched, not read
    sc = sidecar_factory("--tail", str(d / "*.jsonl")).start()
    sc.wait_value("ml_predictions_total", 1)
    (d / "b.jsonl").write_bytes(line(3) * 4)
    s = sc.wait_value("ml_predictions_total", 5)
    assert total(s, "mlsidecar_events_total", source=str(d / "b.jsonl")) == 4
    (d / "a.jsonl").unlink()
    wait_for(lambda: str(d / "a.jsonl") not in sc.get("/")[2].decode(), what="deleted file let go")


def test_partial_lines_oversized_lines_and_encodings(tmp_path, sidecar_factory):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sources]\nmax_line_bytes = 1024\n")
    log = tmp_path / "app.jsonl"
    log.write_bytes(b"\xef\xbb\xbf" + line(0))  # UTF-8 BOM at the start
    sc = sidecar_factory("--tail", str(log), config=str(cfg)).start()
    sc.wait_value("ml_predictions_total", 1)
    half = line(1)
    with open(log, "ab") as fh:
        fh.write(half[:20])
        fh.flush()
        time.sleep(0.6)  # the half line must be held, not rejected
        assert total(sc.scrape(), "mlsidecar_events_rejected_total") == 0
        fh.write(half[20:])
        fh.write(line(2).rstrip(b"\n") + b"\r\n")  # CRLF
        big = b'{"event":"prediction","model":"' + b"x" * 5000 + b'","latency_s":0.1}\n'
        fh.write(big)  # over the limit: skipped to its newline, counted
        fh.write(b'{"event":"prediction","model":"\xc3\x28","latency_s":0.1}\n')  # invalid UTF-8
        fh.write(line(3))
    s = sc.wait_value("ml_predictions_total", 4)
    assert total(s, "mlsidecar_events_rejected_total", reason="oversized_line") == 1
    assert total(s, "mlsidecar_events_rejected_total", reason="invalid_utf8") == 1


def test_oversized_line_arriving_in_pieces_is_never_held_whole(tmp_path, sidecar_factory):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sources]\nmax_line_bytes = 1024\n")
    log = tmp_path / "app.jsonl"
    log.touch()
    sc = sidecar_factory("--tail", str(log), config=str(cfg)).start()
    with open(log, "ab") as fh:
        fh.write(b'{"event":"prediction","model":"')
        for _ in range(200):  # 200 KB without a newline, written in pieces
            fh.write(b"y" * 1024)
            fh.flush()
        fh.write(b'","latency_s":0.1}\n' + line(9))
    s = sc.wait_value("ml_predictions_total", 1)
    assert total(s, "mlsidecar_events_rejected_total", reason="oversized_line") == 1


def test_restart_keeps_counters_and_does_not_reread(tmp_path, sidecar_factory):
    log = tmp_path / "app.jsonl"
    log.write_bytes(b"".join(line(i) for i in range(500)))
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", 500)
    assert sc.stop() == 0
    with open(log, "ab") as fh:
        fh.write(b"".join(line(i) for i in range(500, 700)))
    sc2 = sidecar_factory("--tail", str(log), state_dir=sc.state_dir).start()
    sc2.wait_value("ml_predictions_total", 700)
    time.sleep(1.0)
    assert total(sc2.scrape(), "ml_predictions_total") == 700


def test_rotation_while_stopped_is_finished_after_restart(tmp_path, sidecar_factory):
    log = tmp_path / "app.jsonl"
    log.write_bytes(b"".join(line(i) for i in range(100)))
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", 100)
    assert sc.stop() == 0
    with open(log, "ab") as fh:
        fh.write(b"".join(line(i) for i in range(100, 150)))  # written before the rotation
    os.rename(log, tmp_path / "app.jsonl.1")
    log.write_bytes(b"".join(line(i) for i in range(20)))
    sc2 = sidecar_factory("--tail", str(log), state_dir=sc.state_dir).start()
    sc2.wait_value("ml_predictions_total", 170)


def test_kill_9_at_random_points_neither_loses_nor_recounts(tmp_path, sidecar_factory):
    log = tmp_path / "app.jsonl"
    log.touch()
    rng = random.Random(42)
    state = str(tmp_path / "state")
    sc = sidecar_factory("--tail", str(log), state_dir=state).start()
    w = Writer(log, 30_000, batch=100, pause=0.004)
    w.start()
    for _ in range(3):
        time.sleep(rng.uniform(0.2, 0.8))
        sc.kill_all()
        sc = sidecar_factory("--tail", str(log), state_dir=state, port=sc.port).start()
    w.join()
    assert w.written == 30_000
    sc.wait_value("ml_predictions_total", 30_000, timeout=60)
    time.sleep(1.0)
    assert total(sc.scrape(), "ml_predictions_total") == 30_000
    assert total(sc.scrape(), "ml_prediction_latency_seconds_count") == 30_000


def test_generations_rotated_away_while_stopped_are_read(tmp_path, sidecar_factory):
    log = tmp_path / "app.jsonl"
    log.write_bytes(b"".join(line(i) for i in range(100)))
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", 100)
    sc.kill_all()  # crash, then two rotations before the restart
    time.sleep(0.05)
    with open(log, "ab") as fh:
        fh.write(b"".join(line(i) for i in range(100, 130)))
    os.rename(log, tmp_path / "app.jsonl.1")
    log.write_bytes(b"".join(line(i) for i in range(40)))  # a generation never seen
    os.rename(tmp_path / "app.jsonl.1", tmp_path / "app.jsonl.2")
    os.rename(log, tmp_path / "app.jsonl.1")
    log.write_bytes(b"".join(line(i) for i in range(7)))
    (tmp_path / "app.jsonl.3.gz").write_bytes(b"compressed, old: never read")
    sc2 = sidecar_factory("--tail", str(log), state_dir=sc.state_dir).start()
    sc2.wait_value("ml_predictions_total", 177)
    time.sleep(1.0)
    s = sc2.scrape()
    assert total(s, "ml_predictions_total") == 177
    assert total(s, "mlsidecar_events_rejected_total") == 0


def test_two_rotations_between_scans_lose_no_generation(tmp_path, sidecar_factory):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sources]\npoll_interval = 3.0\n")
    log = tmp_path / "app.jsonl"
    log.write_bytes(b"".join(line(i) for i in range(100)))
    sc = sidecar_factory("--tail", str(log), "--watch", "poll", config=str(cfg)).start()
    sc.wait_value("ml_predictions_total", 100)
    os.rename(log, tmp_path / "app.jsonl.1")
    log.write_bytes(b"".join(line(i) for i in range(1000, 1050)))  # the middle generation
    os.rename(tmp_path / "app.jsonl.1", tmp_path / "app.jsonl.2")
    os.rename(log, tmp_path / "app.jsonl.1")
    log.write_bytes(b"".join(line(i) for i in range(2000, 2005)))
    sc.wait_value("ml_predictions_total", 155)
    assert "a generation rotated away unseen" in sc.log()
    time.sleep(3.5)  # one more rescan: nothing is read twice
    assert total(sc.scrape(), "ml_predictions_total") == 155
