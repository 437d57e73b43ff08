"""Deployment manifests: Kubernetes objects validate against the official schemas (offline, via
kubernetes-validate); the KubeRay RayService and compose file get YAML + field checks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.skipif(importlib.util.find_spec("kubernetes_validate") is None, reason="kubernetes-validate missing")
@pytest.mark.parametrize("name", ["registry.yaml", "vllm-deployment.yaml", "secrets.example.yaml"])
def test_k8s_objects_validate_against_schema(name):
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for d in docs(DEPLOY / "k8s" / name):
        kubernetes_validate.validate(d, version, strict=True)


def test_deployment_wires_registry_probes_and_gpu():
    dep, svc = docs(DEPLOY / "k8s" / "vllm-deployment.yaml")
    spec = dep["spec"]["template"]["spec"]
    server = spec["containers"][0]
    assert "--max-loaded" in server["args"] and server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    # The shared registry comes from PostgreSQL + S3 (never a ReadWriteMany volume, where SQLite is unsafe).
    env = {e["name"]: e for e in server["env"]}
    assert env["ADAPTERHUB_REGISTRY_URL"]["valueFrom"]["secretKeyRef"]["key"] == "registry-url"
    assert server["envFrom"] == [{"configMapRef": {"name": "adapterhub-registry"}}]
    assert all("persistentVolumeClaim" not in v for v in spec["volumes"])
    (config,) = docs(DEPLOY / "k8s" / "registry.yaml")
    assert config["data"]["ADAPTERHUB_ARTIFACTS_URL"].startswith("s3://")
    (secret,) = docs(DEPLOY / "k8s" / "secrets.example.yaml")
    assert {"registry-url", "aws-access-key-id", "aws-secret-access-key"} <= set(secret["stringData"])
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_rayservice_points_at_the_affinity_app():
    (rs,) = docs(DEPLOY / "k8s" / "rayservice.yaml")
    assert rs["kind"] == "RayService" and rs["apiVersion"] == "ray.io/v1"
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    assert app["import_path"] == "adapterhub.deploy.ray.app:app_builder" and app["route_prefix"] == "/"
    module, attr = app["import_path"].split(":")
    assert importlib.util.find_spec(module) is not None
    from adapterhub.serving.config import ServeConfig

    config = ServeConfig.model_validate(app["args"]["config"])  # the server's own options, validated
    assert config.engine == "vllm" and config.replica_gpus == 1 and config.max_replicas > config.replicas


def test_rayservice_pods_use_the_shared_registry():
    (rs,) = docs(DEPLOY / "k8s" / "rayservice.yaml")
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"] for e in pod["containers"][0]["env"]}
        assert {"ADAPTERHUB_REGISTRY_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env
        assert all("persistentVolumeClaim" not in v for v in pod["volumes"])


def test_compose_runs_servers_on_postgres_and_minio():
    from adapterhub.settings import Settings

    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    assert {"postgres", "minio", "minio-bucket", "cpu", "vllm"} <= set(compose["services"])
    for name in ("cpu", "vllm"):
        svc = compose["services"][name]
        assert "volumes" not in svc  # nothing shared through a volume
        assert (DEPLOY.parent / svc["build"]["dockerfile"]).exists()
        env = svc["environment"]
        settings = Settings(_env_file=None, **{k.removeprefix("ADAPTERHUB_").lower(): v for k, v in env.items()
                                               if k.startswith("ADAPTERHUB_") and k != "ADAPTERHUB_API_KEY"})
        assert settings.registry_url.startswith("postgresql://adapterhub:") and "@postgres:" in settings.registry_url
        assert settings.artifacts_url == "s3://adapterhub/registry" and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert svc["depends_on"]["minio-bucket"] == {"condition": "service_completed_successfully"}
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] in settings.registry_url


def test_grafana_dashboard_uses_only_metrics_the_server_exports():
    import re

    from adapterhub.serving.metrics import Metrics

    dash = json.loads((DEPLOY / "grafana" / "adapterhub-versions.json").read_text())
    used = set(re.findall(r"adapterhub_[a-z_]+", json.dumps(dash)))
    exported = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        exported |= {family.name + s for s in suffixes}
    assert used and used <= exported, used - exported
