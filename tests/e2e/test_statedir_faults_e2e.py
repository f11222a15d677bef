"""The state dir under faults: a bad journal, a lost journal, corrupt metric files, a full disk,
a state dir that turns unwritable. Each is found, logged and counted; nothing is counted twice,
and the sidecar carries on (or says plainly on /healthz or /readyz why it cannot)."""

import glob
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import orjson
import pytest

from tests.harness import IN_CI, Sidecar, total, wait_for


def line(i: int) -> bytes:
    return orjson.dumps({"event": "prediction", "model": "m", "version": "v", "latency_s": 0.01,
                         "seq": i}) + b"\n"


def append(path, start: int, n: int) -> None:
    with open(path, "ab") as fh:
        fh.write(b"".join(line(i) for i in range(start, start + n)))


def journal_of(state: str) -> str:
    (path,) = glob.glob(os.path.join(state, "journal", "tail-*.json"))
    return path


def counter_file(state: str) -> str:
    (path,) = glob.glob(os.path.join(state, "metrics", "counter_tail-*.db"))
    return path


def in_last_flush(state: str, metric: str) -> bool:
    """Did the journal's last record write ``metric``? Start-up applies that record's writes
    again (the flush may have been cut short), so such a series is taken back whole."""
    with open(journal_of(state), "rb") as fh:
        last = orjson.loads(fh.read().splitlines()[-1])
    return any(key.startswith('["' + metric + '"') for _name, key, _v, _ts in last["writes"])


def faults(sc, kind: str) -> float:
    return total(sc.scrape(), "mlsidecar_state_faults_total", kind=kind)


def status(sc, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(sc.url + path, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def counted_then_stopped(sidecar_factory, tmp_path, n=1000):
    log = tmp_path / "app.jsonl"
    append(log, 0, n)
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", n)
    assert sc.stop() == 0
    return log, sc.state_dir


def restart_and_add(sidecar_factory, log, state, start, n=10):
    sc = sidecar_factory("--tail", str(log), state_dir=state).start()
    time.sleep(0.5)  # the first look at the files is done once the worker reports ready
    append(log, start, n)
    return sc


def settle(sc, name: str, expected: float, seconds: float = 1.5) -> dict:
    s = sc.wait_value(name, expected)
    time.sleep(seconds)  # nothing more arrives later (a re-read would)
    s = sc.scrape()
    assert total(s, name) == expected
    return s


def break_truncated(p):
    data = open(p, "rb").read()
    open(p, "wb").write(data[:len(data) // 2])


def break_empty(p):
    open(p, "wb").close()


def break_garbage(p):
    open(p, "wb").write(os.urandom(300))


def break_wrong_shape(p):
    open(p, "wb").write(b'{"state": [1, 2], "writes": {"a": 1}}')


def break_directory(p):
    os.unlink(p)
    os.mkdir(p)
    open(os.path.join(p, "x"), "w").close()


@pytest.mark.parametrize("damage", [break_truncated, break_empty, break_garbage, break_wrong_shape,
                                    break_directory], ids=lambda f: f.__name__[6:])
def test_a_bad_journal_is_moved_aside_and_nothing_is_counted_twice(tmp_path, sidecar_factory, damage):
    log, state = counted_then_stopped(sidecar_factory, tmp_path)
    journal = journal_of(state)
    damage(journal)
    sc = restart_and_add(sidecar_factory, log, state, 1000)
    s = settle(sc, "ml_predictions_total", 1010)
    assert total(s, "mlsidecar_state_faults_total", kind="journal_corrupt") == 1
    assert total(s, "mlsidecar_state_faults_total", kind="positions_lost") == 1
    assert total(s, "mlsidecar_source_gaps_total", reason="positions_lost") == 1
    assert os.path.exists(journal + ".corrupt")
    assert sc.log().count("is unusable") == 1, sc.log()
    # And the next restart goes on from the new journal as usual.
    assert sc.stop() == 0
    sc = restart_and_add(sidecar_factory, log, state, 1010, 5)
    settle(sc, "ml_predictions_total", 1015)


def test_values_without_positions_are_not_counted_again(tmp_path, sidecar_factory):
    log, state = counted_then_stopped(sidecar_factory, tmp_path)
    os.unlink(journal_of(state))
    sc = restart_and_add(sidecar_factory, log, state, 1000)
    s = settle(sc, "ml_predictions_total", 1010)
    assert total(s, "mlsidecar_state_faults_total", kind="positions_lost") == 1
    assert "positions they belong to are gone" in sc.log()


def test_compaction_at_start_keeps_the_worker_writing_to_its_file(tmp_path, sidecar_factory):
    """A [labels] change moves series to the new labels; the next start compacts the file
    while it is mapped. Later writes must land in the file that is served."""
    log = tmp_path / "app.jsonl"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[labels]\nteam = "a"\n')
    append(log, 0, 30)
    sc = sidecar_factory("--tail", str(log), config=str(cfg)).start()
    sc.wait_value("ml_predictions_total", 30)
    assert sc.stop() == 0
    cfg.write_text('[labels]\nteam = "b"\n')
    sc = sidecar_factory("--tail", str(log), config=str(cfg), state_dir=sc.state_dir).start()
    append(log, 30, 15)
    sc.wait_value("ml_predictions_total", 45)
    assert sc.stop() == 0
    sc = sidecar_factory("--tail", str(log), config=str(cfg), state_dir=sc.state_dir).start()
    time.sleep(0.5)
    append(log, 45, 15)
    s = settle(sc, "ml_predictions_total", 60)
    assert total(s, "ml_predictions_total", team="b") == 60
    assert sc.stop() == 0
    sc = sidecar_factory("--tail", str(log), config=str(cfg), state_dir=sc.state_dir).start()
    settle(sc, "ml_predictions_total", 60, seconds=0.5)


def _entry(data: bytes, metric: bytes) -> tuple[int, int]:
    """(offset of the key, offset of the value) of the first entry whose key names ``metric``."""
    pos = 8
    used = struct.unpack_from("i", data, 0)[0]
    while pos < used:
        (n,) = struct.unpack_from("i", data, pos)
        padded = n + (8 - (n + 4) % 8)
        if data[pos + 4:pos + 4 + n].startswith(b'["' + metric + b'"'):
            return pos + 4, pos + 4 + padded
        pos += 4 + padded + 16
    raise AssertionError(f"{metric} not in file")


def corrupt_key(path):
    data = bytearray(open(path, "rb").read())
    key, _ = _entry(data, b"ml_predictions")
    data[key] = ord("{")  # still UTF-8, no longer JSON
    open(path, "wb").write(data)


def corrupt_zeroed(path):
    size = os.path.getsize(path)
    open(path, "wb").write(b"\0" * size)


def corrupt_flipped_double(path):
    data = bytearray(open(path, "rb").read())
    _, value = _entry(data, b"ml_predictions")
    data[value + 7] ^= 0x80  # the sign bit: 1000 becomes -1000
    open(path, "wb").write(data)


@pytest.mark.parametrize("damage,kind", [
    (corrupt_key, "metric_entry_corrupt"),
    (corrupt_zeroed, "metric_file_corrupt"),
    (corrupt_flipped_double, "metric_entry_corrupt"),
], ids=["key_not_json", "zeroed", "flipped_double"])
def test_a_corrupt_metric_file_is_moved_aside_logged_and_counted(tmp_path, sidecar_factory, damage,
                                                                 kind):
    log, state = counted_then_stopped(sidecar_factory, tmp_path)
    path = counter_file(state)
    recovered = in_last_flush(state, "ml_predictions")
    damage(path)
    sc = restart_and_add(sidecar_factory, log, state, 1000)
    # The damaged series start again from zero, unless the journal's last flush wrote them; the
    # positions are intact, so no line is re-read.
    s = settle(sc, "ml_predictions_total", 1010 if recovered else 10)
    assert total(s, "mlsidecar_state_faults_total", kind=kind) == 1
    assert os.path.exists(path + ".corrupt")
    assert "the file as found is kept in" in sc.log()
    assert not recovered or "taken back from the journal" in sc.log()
    if damage is not corrupt_zeroed:  # the other series of the file were kept
        assert total(s, "mlsidecar_events_total") == 1010


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail(f"{what} needs root in CI (it mounts a small tmpfs)")
        pytest.skip(f"{what} needs root (it mounts a small tmpfs)")


@pytest.fixture
def small_tmpfs(tmp_path):
    _need_root("the full-disk test")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        why = f"cannot mount a 2 MiB tmpfs (needs CAP_SYS_ADMIN): {r.stderr.strip()}"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_fails_readiness_with_the_reason_and_resumes_by_itself(tmp_path, sidecar_factory,
                                                                        small_tmpfs):
    log = tmp_path / "app.jsonl"
    append(log, 0, 500)
    state = str(small_tmpfs / "state")
    sc = sidecar_factory("--tail", str(log), state_dir=state).start()
    sc.wait_value("ml_predictions_total", 500)
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    append(log, 500, 200)
    wait_for(lambda: status(sc, "/readyz")[0] == 503, what="/readyz failing")
    code, body = status(sc, "/readyz")
    assert "No space left on device" in body or "no space left" in body, body
    time.sleep(1.0)
    assert not glob.glob(os.path.join(state, "journal", "*.tmp")), "temp journal left behind"
    assert sc.proc.poll() is None
    os.unlink(filler)
    s = settle(sc, "ml_predictions_total", 700)
    wait_for(lambda: status(sc, "/readyz")[0] == 200, what="/readyz ready again")
    assert total(s, "mlsidecar_state_faults_total", kind="write_failed") >= 1
    assert "takes writes again" in sc.log()
    # Nothing of what was kept in memory is counted twice after a restart either.
    sc.kill_all()
    sc = sidecar_factory("--tail", str(log), state_dir=state).start()
    settle(sc, "ml_predictions_total", 700)


class SidecarAs(Sidecar):
    """The sidecar run by another user (so that file modes bind it, as they bind a service user)."""

    def __init__(self, prefix: list[str], *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefix = prefix

    def start(self, wait_ready: bool = True) -> "SidecarAs":
        cmd = [*self.prefix, sys.executable, "-m", "mlsidecar", "run", "--listen",
               f"127.0.0.1:{self.port}", "--state-dir", self.state_dir, *self.args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        if wait_ready:
            wait_for(self.ready, what=f"sidecar ready (log: {self.log_path})")
        return self


def test_unwritable_state_dir_fails_health_and_ingest_resumes_when_writable(tmp_path):
    work = tempfile.mkdtemp(prefix="mlsidecar-ro-")
    os.chmod(work, 0o777)
    prefix = []
    if os.geteuid() == 0:  # root writes anywhere: run as nobody, whom the modes bind
        prefix = [shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534",
                  "--clear-groups"]
    log = os.path.join(work, "app.jsonl")
    append(log, 0, 300)
    os.chmod(log, 0o644)
    state = os.path.join(work, "state")
    sc = SidecarAs(prefix, tmp_path, "--tail", log, state_dir=state)
    try:
        sc.start()
        sc.wait_value("ml_predictions_total", 300)
        dirs = [os.path.join(state, d) for d in ("metrics", "journal", "status")]
        for d in dirs:
            os.chmod(d, 0o500)
        append(log, 300, 100)
        wait_for(lambda: status(sc, "/healthz")[0] == 503, what="/healthz failing")
        assert "not writable" in status(sc, "/healthz")[1]
        assert status(sc, "/readyz")[0] == 503
        time.sleep(1.0)
        assert sc.proc.poll() is None, "the supervisor died"
        for d in dirs:
            os.chmod(d, 0o700)
        s = sc.wait_value("ml_predictions_total", 400)
        wait_for(lambda: status(sc, "/healthz")[0] == 200, what="/healthz ok again")
        wait_for(lambda: status(sc, "/readyz")[0] == 200, what="/readyz ok again")
        time.sleep(1.0)
        assert total(sc.scrape(), "ml_predictions_total") == 400
        assert total(s, "mlsidecar_state_faults_total", kind="write_failed") >= 1
        assert sc.stop() == 0
    finally:
        if sc.proc is not None:
            os.killpg(sc.proc.pid, 9)
            sc.proc.wait()
        shutil.rmtree(work, ignore_errors=True)
