"""deploy/k8s: the manifests parse, and probes, ports and names line up with each other and
with the Bento (BentoML images serve on 3000; /readyz and /healthz are BentoML's)."""

from __future__ import annotations

from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _load(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    assert len(docs) == 1, f"{name}: expected one document, got {len(docs)}"
    return docs[0]


def test_deployment_probes_and_ports_match_the_service() -> None:
    deployment, service, hpa = _load("deployment.yaml"), _load("service.yaml"), _load("hpa.yaml")
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000}

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        port = get["port"]
        return get["path"], ports.get(port, port)

    assert probe("readinessProbe") == ("/readyz", 3000)
    assert probe("livenessProbe") == ("/healthz", 3000)
    assert probe("startupProbe")[1] == 3000

    (svc_port,) = service["spec"]["ports"]
    assert ports.get(svc_port["targetPort"], svc_port["targetPort"]) == 3000
    # the Service and the HPA reach this Deployment
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() <= resources["limits"].keys()
    token = {e["name"]: e for e in container["env"]}["MEDFLOW_API_TOKEN"]
    secret = _load("secret.example.yaml")
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
