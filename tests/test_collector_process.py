"""The process collector against real child processes (and one real daemon end to end)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from mlsidecar import catalogue as C
from mlsidecar.collectors import CollectorSettings, CollectorUnavailable
from mlsidecar.collectors import process as P
from mlsidecar.collectors import workload as W
from mlsidecar.collectors.process import ProcessCollector, RunningTotals
from mlsidecar.collectors.workload import Workload
from mlsidecar.store import SeriesWriter

from .collecting import publish, readings
from .harness import total, wait_for

MB = 2**20
READY = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
IDLE = READY + "sys.stdin.read()\n"
ALLOC = "import sys; b = b'x' * (200 * 2**20)\n" + READY + "sys.stdin.read()\n"
BURN = READY + "while True: pass\n"
# A parent that starts a child of its own (a launcher and its worker).
LAUNCHER = ("import subprocess, sys\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'], stdin=subprocess.PIPE)\n"
            + READY + "sys.stdin.read()\nc.kill(); c.wait()\n")


@pytest.fixture
def spawn():
    procs: list[subprocess.Popen] = []

    def start(code: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
        procs.append(p)
        assert p.stdout.readline() == b"ready\n"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def writer(tmp_path):
    w = SeriesWriter(str(tmp_path / "metrics"), "collect")
    yield w
    w.close()


def settings(**opts) -> CollectorSettings:
    base = {k: d for k, (_t, d) in ProcessCollector.options.items()}
    base.update(opts)
    return CollectorSettings("process", True, 5.0, base)


def collector(**opts) -> ProcessCollector:
    # sidecar_root=None: the test's children are children of pytest, which would otherwise
    # count as "the sidecar" and be left out.
    c = ProcessCollector(settings(**opts), environ={}, sidecar_root=None)
    c.setup()
    return c


def v(writer, fam, *labels) -> float:
    return writer.values[(fam, tuple(labels))]


def test_values_move_with_real_processes(spawn, writer):
    tag = f"mlsidecar-test-{uuid.uuid4().hex}"
    c = collector(mode="cmdline", cmdline=re.escape(tag), job_name="job-a")
    publish(c, writer)
    assert v(writer, P.COUNT) == 0
    assert v(writer, P.RESIDENT) == 0

    spawn(IDLE, tag)
    publish(c, writer)
    assert v(writer, P.COUNT) == 1
    rss_idle = v(writer, P.RESIDENT)
    assert rss_idle > MB
    assert v(writer, P.THREADS) >= 1
    assert v(writer, P.OPEN_FDS) >= 3
    assert v(writer, P.MAX_FDS) > 0
    assert 0 < v(writer, P.FD_RATIO) < 1

    # One that allocates memory.
    spawn(ALLOC, tag)
    publish(c, writer)
    assert v(writer, P.COUNT) == 2
    rss = v(writer, P.RESIDENT)
    assert rss - rss_idle > 150 * MB
    assert v(writer, C.TRAINING_MEMORY, "job-a", "rss") == rss
    assert v(writer, P.PSS) > 150 * MB

    # One that burns CPU: user seconds rise.
    user0 = v(writer, P.CPU_SECONDS, "user")
    burner = spawn(BURN, tag)

    def burned():
        publish(c, writer)
        return v(writer, P.CPU_SECONDS, "user") - user0 >= 0.5

    wait_for(burned, timeout=30, what="0.5 s of user CPU from the burner")
    assert v(writer, P.COUNT) == 3
    assert v(writer, P.CTX_SWITCHES, "voluntary") > 0

    # It goes away: the count drops, the counters do not go backwards, no error.
    before = {k: v(writer, *k) for k in [(P.CPU_SECONDS, "user"), (P.CPU_SECONDS, "system"),
                                           (P.CTX_SWITCHES, "voluntary"), (P.IO_READ,), (P.IO_WRITE,)]}
    burner.kill()
    burner.wait()
    publish(c, writer)
    assert v(writer, P.COUNT) == 2
    for k, old in before.items():
        assert v(writer, *k) >= old, k


def test_a_process_that_exits_on_its_own_leaves_no_stale_series(spawn, writer):
    tag = f"mlsidecar-test-{uuid.uuid4().hex}"
    c = collector(mode="cmdline", cmdline=re.escape(tag))
    stays = spawn(ALLOC, tag)
    leaves = spawn(IDLE, tag)
    publish(c, writer)
    assert v(writer, P.COUNT) == 2
    both = v(writer, P.RESIDENT)
    cpu = v(writer, P.CPU_SECONDS, "user") + v(writer, P.CPU_SECONDS, "system")
    leaves.stdin.close()  # it reads EOF and exits by itself ...
    deadline = time.monotonic() + 20
    while psutil.Process(leaves.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.02)
    publish(c, writer)  # ... not reaped yet: a zombie is not the workload
    assert v(writer, P.COUNT) == 1
    leaves.wait()
    publish(c, writer)  # reaped: its PID is gone
    assert v(writer, P.COUNT) == 1
    assert v(writer, P.RESIDENT) < both
    assert v(writer, P.CPU_SECONDS, "user") + v(writer, P.CPU_SECONDS, "system") >= cpu
    assert stays.poll() is None


def test_a_vanished_pid_is_no_exception(spawn):
    c = collector(mode="cmdline", cmdline="never-matches-anything-" + uuid.uuid4().hex)
    p = spawn(IDLE)
    handle = psutil.Process(p.pid)
    p.kill()
    p.wait()
    assert c._read(handle) is None


def test_pid_file_with_and_without_children(spawn, writer, tmp_path):
    launcher = spawn(LAUNCHER)
    pid_file = tmp_path / "run" / "app.pid"
    c = collector(mode="auto", pid_file=str(tmp_path / "run" / "*.pid"))
    assert c.workload.mode == "pid_file"
    publish(c, writer)
    assert v(writer, P.COUNT) == 0, "no PID file yet: nothing, and no error"
    pid_file.parent.mkdir()
    pid_file.write_text(f"{launcher.pid}\n")
    wait_for(lambda: len(psutil.Process(launcher.pid).children()) == 1, what="the launcher's child")
    publish(c, writer)
    assert v(writer, P.COUNT) == 2
    c2 = collector(pid_file=str(pid_file), children=False)
    publish(c2, writer)
    assert v(writer, P.COUNT) == 1


def test_namespace_mode_leaves_the_sidecar_tree_out(spawn):
    sidecar = spawn(LAUNCHER)  # stands in for the supervisor and its workers
    wait_for(lambda: psutil.Process(sidecar.pid).children(), what="the stand-in's child")
    sidecar_child = psutil.Process(sidecar.pid).children()[0].pid
    workload = spawn(IDLE)
    w = Workload("namespace", sidecar_root=sidecar.pid, environ={})
    pids = {p.pid for p in w.select()}
    assert workload.pid in pids and os.getpid() in pids
    assert sidecar.pid not in pids and sidecar_child not in pids


def test_default_sidecar_root_is_the_supervisor_in_a_worker():
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=lambda: q.put(W.default_sidecar_root()))
    child.start()
    got = q.get(timeout=20)
    child.join(20)
    assert got == os.getpid()
    assert W.default_sidecar_root() == os.getpid()  # not in a worker: ourselves


def _proc_root(tmp_path, inode: int) -> str:
    root = tmp_path / f"proc-{inode}"
    (root / "self" / "ns").mkdir(parents=True)
    os.symlink(f"pid:[{inode}]", root / "self" / "ns" / "pid")
    return str(root)


def test_auto_mode_is_sane(tmp_path):
    host, pod = _proc_root(tmp_path, W.INIT_PID_NS_INODE), _proc_root(tmp_path, 4026532199)
    with pytest.raises(CollectorUnavailable, match="nothing to watch"):
        Workload("auto", proc_root=host, environ={})
    assert Workload("auto", proc_root=pod, environ={}).mode == "namespace"
    assert Workload("auto", proc_root=host, environ={W.MODE_ENV: "namespace"}).mode == "namespace"
    assert Workload("auto", pid_file="/x.pid", proc_root=pod, environ={}).mode == "pid_file"
    assert Workload("auto", cmdline="train", proc_root=host, environ={}).mode == "cmdline"
    with pytest.raises(CollectorUnavailable, match="MLSIDECAR_PROCESS_MODE"):
        Workload("auto", proc_root=pod, environ={W.MODE_ENV: "everything"})
    with pytest.raises(CollectorUnavailable, match="needs the pid_file"):
        Workload("pid_file", environ={})
    with pytest.raises(CollectorUnavailable, match="not a valid regex"):
        Workload("cmdline", cmdline="(", environ={})
    c = ProcessCollector(settings(), environ={}, proc_root=host)
    with pytest.raises(CollectorUnavailable):
        c.setup()


def test_running_totals_never_go_backwards():
    t = RunningTotals(["user"])
    t.add(1, {"user": 1.0})
    t.add(2, {"user": 2.0})
    t.end_poll()
    assert t.totals["user"] == 3.0
    t.add(1, {"user": 1.5})  # 2 exited
    t.end_poll()
    assert t.totals["user"] == 3.5
    t.add(1, {"user": 1.4})  # a reading that went down is not subtracted
    t.add(3, {"user": 0.25})  # a newcomer counts from zero
    t.end_poll()
    assert t.totals["user"] == 3.75


def test_readings_are_pure_and_counters_are_totals(spawn):
    """collect() only reads: no store; the running totals are "total" readings (the runner
    continues them after a restart), the rest gauges."""
    tag = f"mlsidecar-test-{uuid.uuid4().hex}"
    spawn(IDLE, tag)
    c = collector(mode="cmdline", cmdline=re.escape(tag))
    got = readings(c)
    assert got[(P.COUNT, ())].value == 1 and got[(P.COUNT, ())].kind == "gauge"
    assert got[(P.RESIDENT, ())].value > 0
    for key in ((P.CPU_SECONDS, ("user",)), (P.CPU_SECONDS, ("system",)), (P.CTX_SWITCHES, ("voluntary",))):
        assert got[key].kind == "total", key
    again = readings(c)
    assert again[(P.CPU_SECONDS, ("user",))].value >= got[(P.CPU_SECONDS, ("user",))].value


def test_counters_continue_from_the_metric_files_after_a_restart(spawn, tmp_path):
    tag = f"mlsidecar-test-{uuid.uuid4().hex}"
    spawn(IDLE, tag)
    w = SeriesWriter(str(tmp_path / "m"), "collect")
    w.set_counter(P.CPU_SECONDS, ("user",), 1000.0)
    w.flush()
    w.close()
    w = SeriesWriter(str(tmp_path / "m"), "collect")
    c = collector(mode="cmdline", cmdline=re.escape(tag))
    publish(c, w)
    assert v(w, P.CPU_SECONDS, "user") == 1000.0
    assert v(w, P.CPU_SECONDS, "system") >= 0
    w.close()


def test_end_to_end_daemon_watches_a_pid_file(sidecar_factory, tmp_path, spawn):
    app = spawn(ALLOC)
    pid_file = tmp_path / "app.pid"
    pid_file.write_text(str(app.pid))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[collectors.process]
interval = 0.5
mode = "pid_file"
pid_file = "{pid_file}"
job_name = "e2e-job"

[collectors.gpu]
interval = 0.5
""")
    sc = sidecar_factory(config=str(cfg)).start()

    def scraped():
        s = sc.scrape()
        return s if total(s, "ml_process_resident_memory_bytes") > 150 * MB else None

    s = wait_for(scraped, what=f"ml_process_resident_memory_bytes > 150 MB (log: {sc.log_path})")
    assert total(s, "ml_process_processes") == 1
    assert total(s, "ml_training_memory_usage_bytes", job_name="e2e-job", memory_type="rss") > 150 * MB
    assert total(s, "mlsidecar_collector_up", collector="process") == 1
    assert total(s, "ml_process_cpu_seconds_total", mode="user") > 0
    # The GPU collector runs too (enabled by default); on a machine without a GPU it is up=0.
    gpu_up = wait_for(lambda: [v for (n, lv), v in sc.scrape().items()
                               if n == "mlsidecar_collector_up" and ("collector", "gpu") in lv],
                      what="mlsidecar_collector_up{collector=gpu}")
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert gpu_up[0] == 0.0
    else:
        pynvml.nvmlShutdown()
    app.kill()
    app.wait()
    sc.wait_value("ml_process_processes", 0)
    assert sc.stop() == 0


# --- mode "sources": the workload found by what it writes ---------------------------

# Holds the file open for appending (as a workload's logger does) and starts a child of its own.
APPENDER = ("import subprocess, sys\n"
            "f = open(sys.argv[1], 'a', buffering=1)\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'], stdin=subprocess.PIPE)\n"
            "f.write('{\"event\":\"prediction\",\"model\":\"m\",\"version\":\"v1\",\"latency_s\":0.01}\\n')\n"
            + READY + "sys.stdin.read()\nc.kill(); c.wait()\n")
READER = "import sys; f = open(sys.argv[1])\n" + READY + "sys.stdin.read()\n"
# Connects to the event socket, sends one event and stays connected.
SOCKET_CLIENT = ("import socket, sys\n"
                 "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                 "s.sendall(b'{\"event\":\"prediction\",\"model\":\"m\",\"version\":\"v1\",\"latency_s\":0.01}\\n')\n"
                 + READY + "sys.stdin.read()\n")


def test_writers_of_finds_the_processes_holding_a_file_open_for_writing(spawn, tmp_path):
    path = tmp_path / "events.jsonl"
    path.touch()
    appender = spawn(APPENDER, str(path))
    reader = spawn(READER, str(path))
    spawn(IDLE)
    assert W.writers_of([str(path)]) == {appender.pid}
    # Rotated away by rename: the same file (device and inode), so still found through its new name.
    path.rename(tmp_path / "events.jsonl.1")
    assert W.writers_of([str(tmp_path / "events.jsonl.1")]) == {appender.pid}
    assert W.writers_of([str(path)]) == set()
    assert reader.pid not in W.writers_of([str(tmp_path / "events.jsonl.1")])


def test_sources_mode_looks_at_every_process_only_now_and_then(spawn, tmp_path, monkeypatch):
    """Between full looks only the known writers are checked (the full look over every open file
    of every process was most of the collector's CPU); a writer that stops is dropped at once."""
    path = tmp_path / "events.jsonl"
    path.touch()
    srcs = W.SourceWriters(type("S", (), {"tail": (str(path),), "socket": ""})())
    wl = Workload("sources", environ={}, sources=srcs, sidecar_root=None, children=False)
    first = spawn(APPENDER, str(path))
    assert {p.pid for p in wl.select()} == {first.pid}
    full_looks = []
    real = W.writers_of
    monkeypatch.setattr(W, "writers_of", lambda *a, **kw: full_looks.append(kw.get("only")) or real(*a, **kw))
    second = spawn(APPENDER, str(path))
    assert {p.pid for p in wl.select()} == {first.pid}  # not looked for yet
    assert full_looks == [{first.pid}]
    monkeypatch.setattr(W, "WRITERS_LOOK_EVERY", 0.0)
    assert {p.pid for p in wl.select()} == {first.pid, second.pid}
    assert full_looks[-1] is None
    monkeypatch.setattr(W, "WRITERS_LOOK_EVERY", 3600.0)
    first.kill()
    first.wait()
    assert {p.pid for p in wl.select()} == {second.pid}


def test_auto_mode_on_a_host_watches_the_writers_of_the_sources(tmp_path):
    host, pod = _proc_root(tmp_path, W.INIT_PID_NS_INODE), _proc_root(tmp_path, 4026532199)
    srcs = W.SourceWriters(type("S", (), {"tail": ("/logs/*.jsonl",), "socket": ""})())
    assert Workload("auto", proc_root=host, environ={}, sources=srcs).mode == "sources"
    assert Workload("auto", proc_root=pod, environ={}, sources=srcs).mode == "namespace"
    with pytest.raises(CollectorUnavailable, match="needs a --tail or --socket"):
        Workload("sources", proc_root=host, environ={})


def sidecar_env() -> dict:
    # In a container's PID namespace "auto" means the whole namespace; ask for "sources" there.
    return {} if W.in_initial_pid_namespace() is not False else {W.MODE_ENV: "sources"}


def test_bare_run_tail_finds_the_writer_and_its_child(spawn, tmp_path, sidecar_factory):
    events = tmp_path / "events.jsonl"
    events.touch()
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[collectors.process]\ninterval = 0.5\n")
    sc = sidecar_factory("--tail", str(events), config=str(cfg), env=sidecar_env()).start()
    s = wait_for(lambda: (lambda s: s if ("mlsidecar_collector_up", (("collector", "process"),)) in s
                          else None)(sc.scrape()), what="process collector ran")
    assert total(s, "mlsidecar_collector_up", collector="process") == 1, sc.log()
    assert total(s, "ml_process_processes") == 0  # nobody writes yet

    appender = spawn(APPENDER, str(events))
    spawn(READER, str(events))  # reads only: not the workload
    # The tail worker and the process collector run apart: wait for each, not one through the other.
    sc.wait_value("ml_predictions_total", 1)
    s = sc.wait_value("ml_process_processes", 2)  # the writer and its child, not the sidecar's own tail
    rss = psutil.Process(appender.pid).memory_info().rss
    assert total(s, "ml_process_resident_memory_bytes") >= rss
    assert "watching the processes that are writers of" in sc.log()
    appender.kill()
    appender.wait()
    sc.wait_value("ml_process_processes", 0)


def test_bare_run_socket_finds_the_connected_client(spawn, tmp_path, sidecar_factory):
    sock = tmp_path / "events.sock"
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[collectors.process]\ninterval = 0.5\n")
    sc = sidecar_factory("--socket", str(sock), config=str(cfg), env=sidecar_env()).start()
    client = spawn(SOCKET_CLIENT, str(sock))
    sc.wait_value("ml_predictions_total", 1)
    s = sc.wait_value("ml_process_processes", 1)
    assert total(s, "ml_process_threads") == psutil.Process(client.pid).num_threads()


def test_another_users_writer_cannot_be_seen_and_is_counted(spawn, tmp_path):
    """As another user the writer's open files are hidden: the workload is empty and says why."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    shared = Path(tempfile.mkdtemp(prefix="mlsidecar-writer-"))  # one the other user can reach
    shared.chmod(0o755)
    events = shared / "events.jsonl"
    events.touch()
    events.chmod(0o644)
    writer = spawn(APPENDER, str(events))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become another user, then look
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            srcs = W.SourceWriters(type("S", (), {"tail": (str(events),), "socket": ""})())
            wl = Workload("sources", environ={}, sources=srcs, sidecar_root=None)
            out = {"selected": [p.pid for p in wl.select()], "uninspectable": wl.uninspectable,
                   "uid": os.geteuid()}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        got = json.loads(fh.read())
    os.waitpid(pid, 0)
    shutil.rmtree(shared, ignore_errors=True)
    if got["uid"] == os.getuid():
        pytest.skip("cannot become another user here")
    assert writer.pid not in got["selected"]
    assert writer.pid in got["uninspectable"], got
