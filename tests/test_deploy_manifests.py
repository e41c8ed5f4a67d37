"""deploy/kubernetes/ validated offline, without kustomize or a cluster.

The kustomization's resources (and its monitoring Component's) are loaded as
kustomize would list them, the generated ConfigMap is rendered from its file, and
every built-in kind is checked against the Kubernetes 1.31 schemas bundled in
``kubernetes-validate`` (strict: an unknown field fails). The Prometheus Operator
kinds have no bundled schema and are checked by shape. Then what a deployment of a
network service must carry: probes on the admin port, the restricted security
context, resources, the HPA and the PDBs, and a config that ``load_config`` takes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from wave_grpc.config import load_config
from wave_grpc.metrics import Metrics

KUBERNETES_VERSION = "1.31"
KUBERNETES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
MONITORING_DIR = KUBERNETES_DIR / "components" / "monitoring"
UID = 10001
ADMIN_PORT = 9091

Resource = dict[str, Any]


def _kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return loaded


def _documents(path: Path) -> Iterator[Resource]:
    for document in yaml.safe_load_all(path.read_text()):
        if document is not None:
            yield document


def _generated_config_maps(directory: Path) -> Iterator[Resource]:
    """``configMapGenerator`` entries as the ConfigMaps kustomize makes (before the hash suffix)."""
    for generator in _kustomization(directory).get("configMapGenerator", []):
        data = {}
        for entry in generator["files"]:
            key, _, file_name = entry.rpartition("=")
            data[key or Path(file_name).name] = (directory / file_name).read_text()
        yield {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


def _rendered(directory: Path) -> list[Resource]:
    resources: list[Resource] = []
    for name in _kustomization(directory)["resources"]:
        resources.extend(_documents(directory / name))
    resources.extend(_generated_config_maps(directory))
    return resources


BASE = _rendered(KUBERNETES_DIR)
MONITORING = _rendered(MONITORING_DIR)


def _named(kind: str, name: str) -> Resource:
    (found,) = (r for r in BASE + MONITORING if r["kind"] == kind and r["metadata"]["name"] == name)
    return found


def _wave_deployments() -> list[Resource]:
    return [_named("Deployment", "wave-grpc-service"), _named("Deployment", "wave-grpc-gateway")]


def test_the_kustomization_lists_every_manifest_file() -> None:
    """A YAML file kustomize would not apply is a file someone edits for nothing."""
    listed = {KUBERNETES_DIR / name for name in _kustomization(KUBERNETES_DIR)["resources"]}
    listed |= {MONITORING_DIR / name for name in _kustomization(MONITORING_DIR)["resources"]}
    listed |= {KUBERNETES_DIR / "kustomization.yaml", MONITORING_DIR / "kustomization.yaml"}
    assert set(KUBERNETES_DIR.rglob("*.yaml")) == listed
    assert _kustomization(MONITORING_DIR)["kind"] == "Component"


@pytest.mark.parametrize(
    "resource",
    [r for r in BASE + MONITORING if r["apiVersion"] != "monitoring.coreos.com/v1"],
    ids=lambda r: f"{r['kind']}/{r['metadata']['name']}",
)
def test_resource_is_valid_kubernetes(resource: Resource) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_kinds_a_scaled_deployment_needs_are_there() -> None:
    kinds = {(r["kind"], r["metadata"]["name"]) for r in BASE}
    assert {
        ("Namespace", "wave-grpc"),
        ("Deployment", "wave-grpc-service"),
        ("Deployment", "wave-grpc-gateway"),
        ("Deployment", "wave-grpc-redis"),
        ("Service", "wave-grpc-service"),
        ("Service", "wave-grpc-gateway"),
        ("Service", "wave-grpc-redis"),
        ("HorizontalPodAutoscaler", "wave-grpc-gateway"),
        ("PodDisruptionBudget", "wave-grpc-gateway"),
        ("PodDisruptionBudget", "wave-grpc-service"),
        ("ConfigMap", "wave-grpc-config"),
    } <= kinds


def test_hpa_scales_the_gateway_on_cpu_and_pdbs_select_pods() -> None:
    hpa = _named("HorizontalPodAutoscaler", "wave-grpc-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "wave-grpc-gateway"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in _named("Deployment", "wave-grpc-gateway")["spec"], "the HPA owns the replica count"
    for deployment in _wave_deployments():
        pdb = _named("PodDisruptionBudget", deployment["metadata"]["name"])
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("deployment", _wave_deployments(), ids=lambda d: d["metadata"]["name"])
def test_pods_are_hardened_probed_and_bounded(deployment: Resource) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["topologySpreadConstraints"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == ADMIN_PORT
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    # Liveness asks the process only: /readyz follows Redis and the service.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][bound].keys()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # noqa: S108 - the pod's own /tmp, an emptyDir
    assert "emptyDir" in volumes[mounts["/var/lib/wave-grpc"]]
    assert volumes[mounts["/etc/wave-grpc"]]["configMap"]["name"] == "wave-grpc-config"
    assert container["args"][-2:] == ["--config", "/etc/wave-grpc/config.toml"]
    only = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
    assert container["args"][:3] == ["serve", "--only", only]


def test_config_map_is_generated_so_a_config_change_rolls_the_pods() -> None:
    """configMapGenerator names the ConfigMap after a hash of its content: the config checksum."""
    assert not any(r["kind"] == "ConfigMap" for name in _kustomization(KUBERNETES_DIR)["resources"]
                   for r in _documents(KUBERNETES_DIR / name))  # fmt: skip
    generator = _kustomization(KUBERNETES_DIR)["configMapGenerator"][0]
    assert generator.get("options", {}).get("disableNameSuffixHash") is not True


def test_config_map_config_loads_and_scales_out(tmp_path: Path) -> None:
    text = _named("ConfigMap", "wave-grpc-config")["data"]["config.toml"]
    path = tmp_path / "config.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.service.store.startswith("redis://wave-grpc-redis:6379/")
    assert config.gateway.shared_cache.startswith("redis://wave-grpc-redis:6379/")
    assert config.gateway.service == "wave-grpc-service:50051"
    assert config.layers.store.startswith("oci://")
    assert config.layers.staging.startswith("/var/lib/wave-grpc/")
    assert config.admin.listen == f"0.0.0.0:{ADMIN_PORT}"


def test_secrets_are_referenced_not_filled() -> None:
    assert not any(r["kind"] == "Secret" for r in BASE)
    for deployment in _wave_deployments():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"secretRef": {"name": "wave-grpc-credentials", "optional": True}} in container["envFrom"]


def test_service_monitor_scrapes_the_admin_port() -> None:
    monitor = _named("ServiceMonitor", "wave-grpc")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"] == [
        {"port": "admin", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    selector = monitor["spec"]["selector"]["matchLabels"]
    for service in (_named("Service", "wave-grpc-service"), _named("Service", "wave-grpc-gateway")):
        assert selector.items() <= service["metadata"]["labels"].items()
        assert "admin" in {p["name"] for p in service["spec"]["ports"]}


def _exported_metric_names() -> set[str]:
    """What /metrics shows for each metric: counters with ``_total``, histograms with ``_bucket``..."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(sample.name for sample in family.samples)
        suffix = {"counter": "_total", "histogram": "_bucket", "gauge": ""}.get(family.type)
        if suffix is not None:
            names.add(family.name + suffix)
    return names


def test_prometheus_rule_alerts_on_metrics_the_code_exports() -> None:
    rule = _named("PrometheusRule", "wave-grpc")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    for entry in rules:
        assert {"alert", "expr", "labels", "annotations"} <= entry.keys(), entry
        assert entry["labels"]["severity"] in {"warning", "critical"}
        assert entry["annotations"]["summary"]
        assert entry["annotations"]["description"]
    exported = _exported_metric_names()
    used = {name for entry in rules for name in re.findall(r"\bwave_grpc_\w+", entry["expr"])}
    assert used
    assert used <= exported, f"not exported by wave_grpc/metrics.py: {sorted(used - exported)}"
    text = " ".join(entry["expr"] for entry in rules)
    for watched in (
        'status="429"',
        "wave_grpc_upstream_requests_total",
        "kube_pod_status_ready",
        'outcome="unavailable"',
    ):
        assert watched in text
