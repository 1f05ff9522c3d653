"""deploy/k8s (issue 14, item 3): schemas, a security scan, and the properties that matter.

Rendering. kustomize is not installed here and there is no cluster, so the tests do not
render the overlay. A renderer of our own would re-implement kustomize and could agree
with itself while kustomize disagrees; instead the overlay is kept to features whose
effect is plain, and each piece is checked on its own:

- every file in base/ is validated as it is (the base uses no generators or transformers
  that would change a manifest's shape: `namespace:` equals the one each file names);
- each overlay patch is a strategic-merge patch of maps only (no lists), whose effect is
  a recursive map merge: it is merged onto the base object it names and the result is
  validated, and the shutdown arithmetic is checked again with the patched ConfigMap;
- each kustomization.yaml must list exactly the files beside it, so a manifest cannot be
  validated here yet be left out of what `kubectl apply -k` deploys (or the reverse);
- the secretGenerator's input (secrets.env) is the user's: it must be git-ignored, and
  the committed example must hold no value.

Schemas: kubernetes-validate (ships the schemas, works offline), strict mode (unknown
fields fail), for Kubernetes 1.31. Security: checkov, from its own venv (.venv/tools,
installed by `make tools`): any failed check fails the test; a skipped check is skipped
in the manifest itself with a `checkov.io/skipN` annotation carrying the reason.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from surge import config
from tests.backends import unavailable

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
KUBERNETES_VERSION = "1.31.0"
CHECKOV = ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"
INTERNAL_PORT = 9181
WORKER_PORT = 9180
PUBLIC_PORT = 8080
GRPC_PORT = 50051

Doc = dict[str, Any]


def _load(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def _kustomization(directory: Path) -> Doc:
    (doc,) = _load(directory / "kustomization.yaml")
    return doc


def _base_docs() -> list[tuple[str, Doc]]:
    return [
        (f"{path.name}#{i}", doc)
        for path in sorted(BASE.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for i, doc in enumerate(_load(path))
    ]


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _merge(base: Any, patch: Any) -> Any:
    """A strategic-merge patch restricted to maps: keys merge, anything else replaces."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(patch)


def _lists_in(value: Any) -> bool:
    if isinstance(value, list):
        return True
    return isinstance(value, dict) and any(_lists_in(v) for v in value.values())


def _overlay_patches() -> list[tuple[str, Doc]]:
    return [(entry["path"], _load(OVERLAY / entry["path"])[0]) for entry in _patches()]


def _patches() -> list[Doc]:
    patches: list[Doc] = _kustomization(OVERLAY).get("patches", [])
    return patches


def _patched(kind: str, name: str) -> Doc:
    """The base object with every overlay patch aimed at it applied."""
    docs = [d for _, d in _base_docs()]
    result = _find(docs, kind, name)
    for _, patch in _overlay_patches():
        if patch["kind"] == kind and patch["metadata"]["name"] == name:
            result = _merge(result, patch)
    return result


# --- kustomize structure --------------------------------------------------------------


def test_base_kustomization_lists_exactly_its_files() -> None:
    kustomization = _kustomization(BASE)
    listed = kustomization["resources"]
    present = sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present
    assert len(listed) == len(set(listed))
    # The base names no generators: what is validated below is what gets applied.
    assert not {"configMapGenerator", "secretGenerator", "patches"} & kustomization.keys()
    # Every file already names the namespace the kustomization sets.
    for where, doc in _base_docs():
        assert doc["metadata"].get("namespace") == kustomization["namespace"], where


def test_overlay_kustomization_lists_exactly_its_files() -> None:
    kustomization = _kustomization(OVERLAY)
    assert kustomization["resources"] == ["../../base"]
    patch_files = [entry["path"] for entry in kustomization["patches"]]
    generator_files = [
        f for gen in kustomization.get("secretGenerator", []) for f in gen.get("envs", [])
    ]
    present = sorted(p.name for p in OVERLAY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(patch_files) == present
    # The overlay pins the image the base leaves at surge:latest.
    (image,) = kustomization["images"]
    assert image["name"] == "surge" and (image.get("newTag") or image.get("digest"))
    assert image.get("newTag") != "latest"
    # The secret comes from the user's file, never from the repository.
    assert generator_files == ["secrets.env"]
    ignored = (OVERLAY / ".gitignore").read_text(encoding="utf-8").split()
    assert "secrets.env" in ignored
    example = (OVERLAY / "secrets.env.example").read_text(encoding="utf-8")
    values = [line for line in example.splitlines() if line and not line.startswith("#")]
    assert values == [], "the committed example must hold no secret value"


@pytest.mark.parametrize(
    ("name", "patch"), _overlay_patches(), ids=[n for n, _ in _overlay_patches()]
)
def test_overlay_patch_merges_onto_a_base_object(name: str, patch: Doc) -> None:
    assert not _lists_in(patch), f"{name}: lists need kustomize's merge keys; keep to maps"
    docs = [d for _, d in _base_docs()]
    target = _find(docs, patch["kind"], patch["metadata"]["name"])
    assert target["apiVersion"] == patch["apiVersion"]
    assert target["metadata"]["namespace"] == patch["metadata"].get("namespace")
    kubernetes_validate.validate(_merge(target, patch), KUBERNETES_VERSION, strict=True)


# --- schemas --------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "doc"), _base_docs(), ids=[w for w, _ in _base_docs()])
def test_base_manifest_is_valid(where: str, doc: Doc) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{where}: {exc}")


# --- what matters for Surge -----------------------------------------------------------


def _pod_spec(kind: str, name: str) -> Doc:
    spec: Doc = _patched(kind, name)["spec"]["template"]["spec"]
    return spec


def _container(kind: str, name: str) -> Doc:
    (container,) = _pod_spec(kind, name)["containers"]
    result: Doc = container
    return result


def _port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def _settings_data() -> dict[str, str]:
    data: dict[str, str] = _patched("ConfigMap", "surge-config")["data"]
    return data


def _seconds(key: str, default: float) -> float:
    text = _settings_data().get(key)
    return default if text is None else float(text)


WORKLOADS = [
    ("Deployment", "surge-server", ["surge", "serve"]),
    ("Deployment", "surge-worker", ["surge", "worker"]),
    ("Job", "surge-migrate", ["surge", "db", "migrate"]),
]


@pytest.mark.parametrize(("kind", "name", "command"), WORKLOADS)
def test_workload_runs_surge_locked_down(kind: str, name: str, command: list[str]) -> None:
    pod = _pod_spec(kind, name)
    container = _container(kind, name)
    assert container["command"] == command
    assert container["image"] == "surge:latest"  # the overlay's `images:` replaces it
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][bound].keys()
    # Settings from the ConfigMap, the JWT secret (and a database password) from the
    # Secret the overlay generates; the Secret is not optional, so no pod starts without.
    sources = container["envFrom"]
    assert sources[0] == {"configMapRef": {"name": "surge-config"}}
    assert sources[1] == {"secretRef": {"name": "surge-secrets"}}
    # Whatever Surge writes goes to a writable volume, the root filesystem being read-only.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    if kind == "Deployment":
        assert "emptyDir" in volumes[mounts[_settings_data()["SURGE_DATA_DIR"]]]


def test_no_secret_value_anywhere_in_the_base() -> None:
    data = _settings_data()
    assert data["SURGE_ENV"] == "production"  # refuses a generated JWT secret
    assert "SURGE_JWT_SECRET" not in data
    assert not any(re.search(r"://[^/@:]+:[^/@]+@", v) for v in data.values()), "password in URL"
    for where, doc in _base_docs():
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), where


def test_listener_ports_match_the_configmap() -> None:
    data = _settings_data()
    assert int(data["SURGE_PORT"]) == PUBLIC_PORT
    assert int(data["SURGE_INTERNAL_PORT"]) == INTERNAL_PORT
    assert int(data["SURGE_WORKER_PORT"]) == WORKER_PORT
    assert int(data["SURGE_GRPC_PORT"]) == GRPC_PORT
    assert data["SURGE_HOST"] == data["SURGE_INTERNAL_HOST"] == "0.0.0.0"
    assert data["SURGE_WORKERS"] == "1"
    # Every key is a real setting (a typo would be silently ignored by Surge).
    known = {field.env for field in config.FIELDS}
    assert set(data) <= known


@pytest.mark.parametrize(
    ("name", "port"), [("surge-server", INTERNAL_PORT), ("surge-worker", WORKER_PORT)]
)
def test_probes_use_the_internal_listener(name: str, port: int) -> None:
    container = _container("Deployment", name)
    paths = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in paths.items():
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert _port(container, check["port"]) == port, probe
    annotations = _patched("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_grace_period_covers_prestop_shutdown_delay_and_drain() -> None:
    defaults = config.Settings()
    delay = _seconds("SURGE_SHUTDOWN_DELAY", defaults.shutdown_delay)
    drain = _seconds("SURGE_DRAIN_TIMEOUT", defaults.drain_timeout)
    server = _pod_spec("Deployment", "surge-server")
    command = _container("Deployment", "surge-server")["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 1, "load balancers need time to stop sending"
    # The grace period counts from the start of preStop; then SIGTERM, the shutdown delay,
    # the drain, 1 s for WebSocket closes (docs/operations.md).
    assert server["terminationGracePeriodSeconds"] > pre_stop + delay + drain + 1
    worker = _pod_spec("Deployment", "surge-worker")
    assert worker["terminationGracePeriodSeconds"] > delay + drain + 1


def test_public_service_does_not_expose_the_internal_listener() -> None:
    docs = [d for _, d in _base_docs()]
    service = _find(docs, "Service", "surge")
    server = _container("Deployment", "surge-server")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "server"
    (entry,) = service["spec"]["ports"]
    assert entry["port"] == 80 and _port(server, entry["targetPort"]) == PUBLIC_PORT
    for other in docs:
        if other["kind"] != "Service" or other["metadata"]["name"] == "surge":
            continue
        # Any other Service reaching the internal port must be headless (no load balancing).
        targets = [_port(server, p.get("targetPort", p["port"])) for p in other["spec"]["ports"]]
        if INTERNAL_PORT in targets:
            assert other["spec"].get("clusterIP") == "None"
            assert other["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_grpc_service_is_headless_and_reaches_the_grpc_port() -> None:
    """gRPC clients keep one connection: a virtual IP would pin each to one pod."""
    service = _find([d for _, d in _base_docs()], "Service", "surge-grpc")
    server = _container("Deployment", "surge-server")
    assert service["spec"]["clusterIP"] == "None"
    (entry,) = service["spec"]["ports"]
    assert _port(server, entry["targetPort"]) == GRPC_PORT
    assert entry["appProtocol"] == "grpc"
    policy = _find([d for _, d in _base_docs()], "NetworkPolicy", "surge-server-ingress")
    assert any(
        GRPC_PORT in {p["port"] for p in rule["ports"]} for rule in policy["spec"]["ingress"]
    )


def test_network_policy_keeps_metrics_to_monitoring() -> None:
    policy = _find([d for _, d in _base_docs()], "NetworkPolicy", "surge-server-ingress")
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if INTERNAL_PORT in ports:
            assert ports == {INTERNAL_PORT}
            namespaces = [f["namespaceSelector"]["matchLabels"] for f in rule["from"]]
            assert namespaces == [{"kubernetes.io/metadata.name": "monitoring"}]
    egress = _find([d for _, d in _base_docs()], "NetworkPolicy", "surge-egress")
    ports = {p["port"] for rule in egress["spec"]["egress"] for p in rule["ports"]}
    assert ports == {53, 6379, 3306, 5432}


def test_autoscaler_on_cpu_and_in_flight_requests() -> None:
    hpa = _patched("HorizontalPodAutoscaler", "surge-server")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "surge-server"
    assert hpa["spec"]["minReplicas"] >= 3
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    name = metrics["Pods"]["pods"]["metric"]["name"]
    # The metric the adapter serves is one Surge exports (every collector is registered
    # in surge.metrics.collectors).
    collectors = (ROOT / "src" / "surge" / "metrics" / "collectors.py").read_text(encoding="utf-8")
    assert f'"{name}"' in collectors
    pdb = _find([d for _, d in _base_docs()], "PodDisruptionBudget", "surge-server")
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


# --- checkov --------------------------------------------------------------------------


def test_checkov_finds_nothing() -> None:
    checkov = Path(os.environ.get("CHECKOV", CHECKOV))
    if not checkov.exists():
        found = shutil.which("checkov")
        if found is None:
            unavailable(f"checkov not installed ({checkov}); `make tools` installs it")
        checkov = Path(found)
    started = time.monotonic()
    run = subprocess.run(
        [
            str(checkov),
            "-d",
            str(K8S),
            "--framework",
            "kubernetes",
            "--compact",
            "--skip-download",  # no network: no guideline download from the vendor's API
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    assert run.returncode in (0, 1), run.stderr[-2000:]
    report = json.loads(run.stdout)
    results = report["results"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in results["failed_checks"]
    ]
    assert failed == [], "\n".join(failed)
    assert run.returncode == 0
    # A file checkov cannot parse is dropped silently: every workload must have been seen.
    seen = {c["resource"] for c in results["passed_checks"]}
    for kind, name, _ in WORKLOADS:
        assert f"{kind}.surge.{name}" in seen, f"checkov did not scan {kind}/{name}"
    skipped = sorted(f"{c['check_id']} {c['resource']}" for c in results["skipped_checks"])
    for check in results["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} skipped without a reason"
    print(f"checkov: {len(seen)} resources, {len(skipped)} skips, {elapsed:.1f} s")
    assert elapsed < 120, f"checkov took {elapsed:.0f} s"
