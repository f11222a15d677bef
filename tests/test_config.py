"""Config: strict keys, errors that name file and key, the example documents every key."""

import dataclasses
import subprocess
import sys
import tomllib

import pytest

from mlsidecar import collectors, config
from mlsidecar.config import ConfigError

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def load_text(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return config.load(str(p)), str(p)


@pytest.mark.parametrize("text,key,problem", [
    ("[sources]\ntial = ['x']\n", "sources.tial", "did you mean 'sources.tail'"),
    ("[server]\nlisten = 9877\n", "server.listen", "must be a string"),
    ("[server]\nlisten = 'nohost'\n", "server.listen", "HOST:PORT"),
    ("[sources]\npoll_interval = 0\n", "sources.poll_interval", "must be > 0"),
    ("[sources]\nsocket_mode = 'rw'\n", "sources.socket_mode", "octal"),
    ("[sources]\nwatch = 'sometimes'\n", "sources.watch", "auto, inotify or poll"),
    ("log_level = 'loud'\n", "log_level", "must be one of"),
    ("[collectors.gpx]\n", "collectors.gpx", "unknown collector"),
    ("[[mappings]]\nevent = 'x'\n", "mappings[0].metrics", "needs at least one"),
    ("[[mappings]]\nevent = 'x'\n[[mappings.metrics]]\nname = 'ml_x'\n", "mappings[0].metrics[0].name", "reserved"),
    ("[[mappings]]\nevent = 'x'\n[[mappings.metrics]]\nname = 'a'\ntype = 'gauge'\n",
     "mappings[0].metrics[0].value", "needs the field"),
    ("[expire]\nml_feature_drift_score = -1\n", "expire.ml_feature_drift_score", ">= 0"),
    ("[expire]\nml_feature_drift = 60\n", "expire.ml_feature_drift", "did you mean 'ml_feature_drift_"),
    ("[expire]\nml_nonesuch = 60\n", "expire.ml_nonesuch", "no such built-in metric"),
    ("[expire]\n'a b' = 60\n", "expire.a b", "not a valid metric name"),
    ("[labels]\n\"caf\u00e9\" = 'x'\n", "labels.caf\u00e9", "not a valid Prometheus label name"),
    ("[labels]\nle = 'x'\n", "labels.le", "reserved"),
    ("[labels]\nquantile = 'x'\n", "labels.quantile", "reserved"),
    ("[labels]\n__meta = 'x'\n", "labels.__meta", "reserved"),
    ("[labels]\n'a-b' = 'x'\n", "labels.a-b", "not a valid Prometheus label name"),
    ("[labels_from_env]\n\"\u00fcber\" = 'POD'\n", "labels_from_env.\u00fcber", "not a valid"),
    ("[[mappings]]\nevent = 'x'\n[[mappings.metrics]]\nname = 'app_lat'\ntype = 'histogram'\nvalue = 'v'\n"
     "[[mappings]]\nevent = 'y'\n[[mappings.metrics]]\nname = 'app_lat_count'\ntype = 'gauge'\nvalue = 'v'\n",
     "mappings[1].metrics[0].name", "ends in _count"),
    ("[[mappings]]\nevent = 'x'\n[[mappings.metrics]]\nname = 'app_n'\ntype = 'counter'\n"
     "[[mappings.metrics]]\nname = 'app_n'\ntype = 'gauge'\nvalue = 'v'\n",
     "mappings[0].metrics[1].name", "would share the name app_n with counter 'app_n_total'"),
    ("[limits]\nmax_series = 0\n", "limits.max_series", "must be > 0"),
    ("[limits]\nmax_user_metrics = -1\n", "limits.max_user_metrics", "must be > 0"),
])
def test_errors_name_the_file_and_the_key(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, text)
    msg = str(exc.value)
    assert exc.value.key == key
    assert msg.startswith(str(tmp_path / "c.toml") + ": " + key)
    assert problem in msg


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_text(tmp_path, "[sources\n")
    with pytest.raises(ConfigError, match="file not found"):
        config.load(str(tmp_path / "nope.toml"))


def test_expire_accepts_builtins_with_or_without_total_and_names_metric_events_may_create():
    cfg = config.from_dict({"expire": {"ml_predictions": 60, "ml_feature_drift_score": 0, "shop_kpi": 5}})
    assert dict(cfg.expire) == {"ml_predictions_total": 60.0, "ml_feature_drift_score": 0.0, "shop_kpi": 5.0}


def check_config(*args: str):
    return subprocess.run([sys.executable, "-m", "mlsidecar", "check-config", *args],
                          capture_output=True, text=True, timeout=60)


def one_line(out, *words: str) -> None:
    """Exit 2 and one line on stderr naming the problem (no traceback)."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_check_config_gives_one_line_for_a_directory_and_for_non_utf8(tmp_path):
    one_line(check_config(str(tmp_path)), str(tmp_path), "is a directory")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[labels]\nteam = "caf\xe9"\n')
    one_line(check_config(str(bad)), str(bad), "not UTF-8")


def test_check_config_reads_the_web_config_file_it_names(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: not-a-bcrypt-hash\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "st"}"\n[server]\nweb_config_file = "{web}"\n')
    one_line(check_config(str(cfg)), str(web), "alice")
    cfg.write_text(f'state_dir = "{tmp_path / "st"}"\n[server]\nweb_config_file = "{tmp_path / "nope.yml"}"\n')
    one_line(check_config(str(cfg)), "nope.yml", "file not found")


def test_check_config_refuses_an_unknown_socket_group(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "st"}"\n[sources]\nsocket = "{tmp_path / "s.sock"}"\n'
                   'socket_group = "no-such-group-here"\n')
    one_line(check_config(str(cfg)), "sources.socket_group", "no-such-group-here")


def run_briefly(tmp_path, *args: str):
    from tests.harness import free_port
    return subprocess.run([sys.executable, "-m", "mlsidecar", "run", "--listen", f"127.0.0.1:{free_port()}",
                           *args], capture_output=True, text=True, timeout=60)


def test_run_fails_at_once_on_an_unknown_socket_group(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[sources]\nsocket = "{tmp_path / "s.sock"}"\nsocket_group = "no-such-group-here"\n')
    one_line(run_briefly(tmp_path, "--config", str(cfg), "--state-dir", str(tmp_path / "st")),
             "sources.socket_group", "no-such-group-here")


def test_run_gives_one_line_when_the_state_dir_holds_a_plain_file_for_metrics(tmp_path):
    st = tmp_path / "st"
    st.mkdir()
    (st / "metrics").write_text("not a directory")
    one_line(run_briefly(tmp_path, "--state-dir", str(st)), str(st / "metrics"), "not a directory")
    one_line(run_briefly(tmp_path, "--config", str(tmp_path)), "is a directory")


def test_flags_override_the_file(tmp_path):
    cfg, _ = load_text(tmp_path, "[sources]\ntail = ['/a']\n[server]\nlisten = '127.0.0.1:1'\n")
    out = config.with_overrides(cfg, tail=["/b"], listen="127.0.0.1:2", state_dir="/s",
                                collectors={"host": True})
    assert out.sources.tail == ("/b",) and out.server.listen == "127.0.0.1:2" and out.state_dir == "/s"
    assert out.collector("host").enabled


def test_labels_from_environment():
    cfg = config.from_dict({"labels": {"cluster": "a"}, "labels_from_env": {"pod": "POD_NAME"}})
    assert cfg.static_labels({"POD_NAME": "p-1"}) == {"cluster": "a", "pod": "p-1"}
    assert cfg.static_labels({}) == {"cluster": "a"}


def test_example_config_loads_and_documents_every_key():
    path = ROOT / "config.example.toml"
    cfg = config.load(str(path))
    assert cfg.server.listen == config.DEFAULT_LISTEN
    raw = tomllib.loads(path.read_text())
    text = path.read_text()
    for section, cls in (("server", config.ServerConfig), ("sources", config.SourcesConfig),
                         ("limits", config.LimitsConfig)):
        for f in dataclasses.fields(cls):
            assert f.name in raw[section], f"config.example.toml lacks {section}.{f.name}"
    for name, cls in collectors.load_all().items():
        table = raw.get("collectors", {}).get(name, {})
        for opt in ("enabled", "interval", *cls.options):
            assert opt in table, f"config.example.toml lacks collectors.{name}.{opt}"
    from mlsidecar.analytics.settings import AnalyticsSettings
    for f in dataclasses.fields(AnalyticsSettings):
        assert f.name in raw.get("analytics", {}) or f"# {f.name} =" in text, \
            f"config.example.toml lacks analytics.{f.name}"


def test_check_config_command(tmp_path):
    good = subprocess.run([sys.executable, "-m", "mlsidecar", "check-config", str(ROOT / "config.example.toml")],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[sources]\nmax_line_bytes = 'big'\n")
    out = subprocess.run([sys.executable, "-m", "mlsidecar", "check-config", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"mlsidecar: {bad}: sources.max_line_bytes: must be an integer, got str 'big'"


def test_port_in_use_exits_with_one_clear_line(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "mlsidecar", "run", "--listen", f"127.0.0.1:{port}",
                              "--state-dir", str(tmp_path / "st")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen on" in lines[0] and "in use" in lines[0]


def test_every_subcommand_has_help():
    for sub in ([], ["run"], ["demo"], ["check-config"], ["probe"]):
        out = subprocess.run([sys.executable, "-m", "mlsidecar", *sub, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: mlsidecar" in out.stdout
    v = subprocess.run([sys.executable, "-m", "mlsidecar", "--version"], capture_output=True, text=True)
    from mlsidecar import __version__
    assert v.stdout.strip() == f"mlsidecar {__version__}"
