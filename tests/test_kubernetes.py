"""Kubernetes manifests: valid against the API schemas (offline, kubernetes-validate) and wired right."""

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from mlsidecar import __version__
from mlsidecar import config as configmod
from mlsidecar.config import parse_listen

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
FILES = sorted(K8S.glob("*.yaml"))
# 1.29: the first release with native sidecars (initContainers[].restartPolicy) on by default.
VERSIONS = ["1.29.0", kv.utils.latest_version()]
DOCKER_UID = 10001


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def workloads():
    for f in FILES:
        items = docs(f)
        maps = {d["metadata"]["name"]: d for d in items if d["kind"] == "ConfigMap"}
        for d in items:
            if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
                yield pytest.param(f, d, maps, id=f"{f.name}:{d['kind']}")


def test_there_are_manifests():
    names = {f.name for f in FILES}
    assert {"inference-deployment.yaml", "inference-deployment-classic.yaml", "training-job.yaml"} <= names


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_valid_against_the_schema(path, version):
    for d in docs(path):
        kv.validate(d, version, strict=True)  # strict: unknown fields are errors too


def test_validation_can_fail():
    """The check above is real: a misplaced field and a wrong type are refused."""
    dep = next(d for d in docs(K8S / "inference-deployment.yaml") if d["kind"] == "Deployment")
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["initContainers"][0]["restartPolcy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[0], strict=True)
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[0], strict=True)


def sidecar_of(pod: dict, native: bool) -> dict:
    group = pod.get("initContainers", []) if native else pod["containers"]
    found = [c for c in group if c["name"] == "mlsidecar"]
    assert len(found) == 1, f"mlsidecar not in {'initContainers' if native else 'containers'}"
    return found[0]


@pytest.mark.parametrize("path, obj, maps", list(workloads()))
def test_sidecar_wiring(path, obj, maps):
    native = "classic" not in path.name
    template = obj["spec"]["template"]
    pod = template["spec"]
    side = sidecar_of(pod, native)
    workload = [c for c in pod["containers"] if c["name"] != "mlsidecar"]
    assert workload, "no workload container"
    if native:
        assert side["restartPolicy"] == "Always"  # what makes an init container a sidecar
    else:
        assert "restartPolicy" not in side

    # The image is this version of the Dockerfile's image.
    assert side["image"].rsplit(":", 1)[1] == __version__

    # The config: a real mlsidecar config, mounted from the ConfigMap in the same file.
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in side["volumeMounts"]}
    cfg_vol = next(v for v in vols.values() if "configMap" in v)
    cm = maps[cfg_vol["configMap"]["name"]]
    args = side["args"]
    cfg_path = args[args.index("--config") + 1]
    assert cfg_path == mounts[cfg_vol["name"]]["mountPath"] + "/config.toml"
    cfg = configmod.from_dict(tomllib.loads(cm["data"]["config.toml"]), f"{path.name}:config.toml")

    # Scrape annotations agree with the port the sidecar listens on and the probes use.
    ann = template["metadata"]["annotations"]
    port = parse_listen(cfg.server.listen)[1]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(port)
    assert ann["prometheus.io/path"] == "/metrics"
    ports = {p["name"]: p["containerPort"] for p in side["ports"]}
    assert ports["metrics"] == port
    assert side["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert side["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert side[probe]["httpGet"]["port"] in ("metrics", port)

    # Shared event volume: an emptyDir both containers mount; the tail patterns point into it.
    events = [n for n, v in vols.items() if "emptyDir" in v and n in mounts
              and any(n in {m["name"] for m in c.get("volumeMounts", [])} for c in workload)]
    assert events, "no emptyDir shared by sidecar and workload"
    shared_path = mounts[events[0]]["mountPath"]
    assert cfg.sources.tail and all(t.startswith(shared_path + "/") for t in cfg.sources.tail)
    assert pod["shareProcessNamespace"] is True
    process = cfg.collector("process")
    assert process is not None and process.enabled and process.options["mode"] in ("namespace", "auto")
    gpu_limits = [c["resources"].get("limits", {}).get("nvidia.com/gpu") for c in workload]
    assert cfg.collector("gpu").enabled == any(gpu_limits), "GPU collector on exactly where there is a GPU"

    # Read-only root: the state dir must be a writable volume.
    state_mounts = [m for m in side["volumeMounts"] if m["mountPath"] == cfg.state_dir]
    assert state_mounts and not state_mounts[0].get("readOnly")
    assert "emptyDir" in vols[state_mounts[0]["name"]]

    # Downward API: every env var the config reads labels from is set from the pod's fields.
    env = {e["name"]: e for e in side.get("env", [])}
    assert cfg.labels_from_env
    for label, var in cfg.labels_from_env:
        assert var in env, f"[labels_from_env] {label} = {var!r}: {var} not in the sidecar's env"
        assert "fieldRef" in env[var].get("valueFrom", {}), var
    fields = {e["valueFrom"]["fieldRef"]["fieldPath"] for e in env.values() if "valueFrom" in e}
    assert {"metadata.name", "metadata.namespace", "spec.nodeName"} <= fields
    for f in fields:
        m = re.fullmatch(r"metadata\.labels\['(.+)'\]", f)
        if m and obj["kind"] == "Deployment":
            assert m.group(1) in template["metadata"]["labels"], f

    # Locked down.
    sc = side["securityContext"]
    psc = pod["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert psc.get("runAsUser") == DOCKER_UID  # the image's user
    assert not sc.get("privileged", False)
    assert pod.get("automountServiceAccountToken") is False

    # Sized from measured overhead.
    assert side["resources"] == {"requests": {"cpu": "20m", "memory": "64Mi"},
                                 "limits": {"cpu": "200m", "memory": "128Mi"}}


def test_training_job_has_a_gpu_and_finishes():
    job = next(d for d in docs(K8S / "training-job.yaml") if d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    trainer = next(c for c in pod["containers"] if c["name"] != "mlsidecar")
    assert int(trainer["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # The sidecar must be native, or the Job never completes.
    assert sidecar_of(pod, native=True)["restartPolicy"] == "Always"
    assert not any(c["name"] == "mlsidecar" for c in pod["containers"])
    env = {e["name"]: e for e in sidecar_of(pod, True)["env"]}
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['job-name']"


def test_classic_variant_matches_the_native_one():
    """Same pod apart from where the sidecar sits."""
    native = next(d for d in docs(K8S / "inference-deployment.yaml") if d["kind"] == "Deployment")
    classic = next(d for d in docs(K8S / "inference-deployment-classic.yaml") if d["kind"] == "Deployment")
    n_side = copy.deepcopy(sidecar_of(native["spec"]["template"]["spec"], True))
    n_side.pop("restartPolicy")
    assert sidecar_of(classic["spec"]["template"]["spec"], False) == n_side
    n_cm = next(d for d in docs(K8S / "inference-deployment.yaml") if d["kind"] == "ConfigMap")
    c_cm = next(d for d in docs(K8S / "inference-deployment-classic.yaml") if d["kind"] == "ConfigMap")
    assert n_cm["data"] == c_cm["data"]


# --- which scrape job of deploy/prometheus/prometheus.yml takes each pod ----------------------

def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _kept(job: dict, meta: dict) -> bool:
    """Prometheus' keep/drop relabelling of one target (the other actions do not filter)."""
    for r in job.get("relabel_configs", []):
        if r.get("action") not in ("keep", "drop"):
            continue
        value = r.get("separator", ";").join(meta.get(s, "") for s in r["source_labels"])
        match = re.fullmatch(r.get("regex", "(.*)"), value) is not None
        if (r["action"] == "keep") != match:
            return False
    return True


def _targets(job: dict, pod: dict, namespace: str, services: list[dict]) -> int:
    """How many targets a Kubernetes job makes of one pod (one per matching endpoint port)."""
    (sd,) = job["kubernetes_sd_configs"]
    if namespace not in sd.get("namespaces", {}).get("names", [namespace]):
        return 0
    meta = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_phase": "Running"}
    meta |= {f"__meta_kubernetes_pod_label_{_sanitize(k)}": v for k, v in pod["metadata"].get("labels", {}).items()}
    meta |= {f"__meta_kubernetes_pod_annotation_{_sanitize(k)}": v
             for k, v in pod["metadata"].get("annotations", {}).items()}
    if sd["role"] == "pod":
        return int(_kept(job, meta))
    n = 0
    for svc in services:
        selector = svc["spec"].get("selector", {})
        if svc["metadata"].get("namespace") != namespace or not selector.items() <= pod["metadata"]["labels"].items():
            continue
        for port in svc["spec"]["ports"]:
            m = meta | {f"__meta_kubernetes_service_label_{_sanitize(k)}": v
                        for k, v in svc["metadata"].get("labels", {}).items()}
            m |= {"__meta_kubernetes_service_name": svc["metadata"]["name"],
                  "__meta_kubernetes_endpoint_port_name": port.get("name", "")}
            n += _kept(job, m)
    return n


def scrape_jobs(path: Path) -> dict[str, int]:
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    items = docs(path)
    services = [d for d in items if d["kind"] == "Service"]
    (w,) = [d for d in items if d["kind"] in ("Deployment", "Job")]
    pod = w["spec"]["template"]
    out = {}
    for job in cfg["scrape_configs"]:
        if "kubernetes_sd_configs" in job:
            n = _targets(job, pod, w["metadata"].get("namespace", "default"), services)
            if n:
                out[job["job_name"]] = n
    return out


@pytest.mark.parametrize("path,job", [
    (K8S / "inference-deployment.yaml", "ml-inference-services"),
    (K8S / "inference-deployment-classic.yaml", "ml-inference-services"),
    (K8S / "training-job.yaml", "ml-training-jobs"),
], ids=lambda x: getattr(x, "name", x))
def test_each_pod_is_scraped_by_exactly_one_job_once(path, job):
    assert scrape_jobs(path) == {job: 1}


def test_the_scrape_job_check_can_fail():
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    pods_job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "mlsidecar-pods")
    training = docs(K8S / "training-job.yaml")[-1]["spec"]["template"]
    assert _targets(pods_job, training, "ml-training", []) == 0  # left to ml-training-jobs
    unlabelled = copy.deepcopy(training)
    del unlabelled["metadata"]["labels"]["job_type"]
    assert _targets(pods_job, unlabelled, "ml-training", []) == 1
    assert _targets(pods_job, unlabelled, "default", []) == 0  # not an ML namespace
