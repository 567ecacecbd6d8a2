"""deploy/kubernetes/chatd.yaml against chatd itself: the config it ships
loads, and the probes, ports and grace period agree with that config."""

from __future__ import annotations

from typing import Any

import yaml

from lakehouse import config as configuration
from lakehouse import worker_limits
from lakehouse.registry import build_registry
from tests.support import ROOT

MANIFEST = ROOT / "deploy" / "kubernetes" / "chatd.yaml"


def documents() -> dict[str, Any]:
    with MANIFEST.open() as src:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(src)}


def shipped() -> configuration.Config:
    text = documents()["ConfigMap"]["data"]["lakehouse.toml"]
    return configuration.parse(text, source=str(MANIFEST))


def container() -> dict[str, Any]:
    spec = documents()["Deployment"]["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    return dict(only)


def test_the_shipped_config_loads_and_builds() -> None:
    config = shipped()
    worker_limits.check(config, config.chatd.server.workers)
    # Without keys only the Ollama pool registers, with both hosts.
    registry = build_registry(config, environ={})
    assert registry.names() == ["ollama"]
    assert configuration.host_urls(config.chatd.providers["ollama"]).keys() == {"gpu1", "gpu2"}


def test_ports_agree_with_the_bind() -> None:
    config = shipped()
    host, _, port = config.chatd.bind.rpartition(":")
    assert host == "0.0.0.0"  # the kubelet and the Service reach the pod's IP
    (declared,) = container()["ports"]
    assert declared["containerPort"] == int(port)
    (service,) = documents()["Service"]["spec"]["ports"]
    assert service["targetPort"] == declared["name"]
    assert service["appProtocol"] == "kubernetes.io/h2c"
    argv = container()["command"]
    mount = container()["volumeMounts"][0]["mountPath"]
    assert argv[argv.index("--config") + 1] == f"{mount}/lakehouse.toml"


def test_probes_use_readiness_and_liveness_and_need_no_token() -> None:
    c = container()
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    exempt = shipped().chatd.auth.exempt
    assert "/ready" in exempt and "/health" in exempt


def test_the_grace_period_covers_the_drain() -> None:
    spec = documents()["Deployment"]["spec"]["template"]["spec"]
    pre_stop = float(container()["lifecycle"]["preStop"]["exec"]["command"][1])
    graceful = shipped().chatd.server.graceful_timeout_secs
    # The preStop pause, then the graceful drain, then sessions closing.
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + graceful + 10
