"""deploy/prometheus (issue 14, item 5): the scrape configs and the alert rules.

- `promtool check config` on both scrape configs (each loads alerts.yml through
  `rule_files`, so the rules are checked from there too);
- `promtool check rules alerts.yml` and `promtool test rules alerts.test.yml`: every alert
  fires on the series meant to fire it and stays quiet on the others;
- every alert has `for:`, a severity and its summary, description and runbook, and is
  covered by the unit tests both ways (firing, and not);
- every metric the rules query is exported by a real `surge serve` (internal listener)
  or `surge worker`: a renamed metric breaks this test, not a silent alert;
- the Kubernetes manifests carry what the pod discovery keeps (labels, annotations,
  ports), when deploy/k8s has them.

Debian's promtool (the `prometheus` package, scripts/install-system-deps.sh) is built
without Kubernetes service discovery: it rejects `kubernetes_sd_configs` as an unknown
field. With such a promtool, prometheus.yml is checked with each `kubernetes_sd_configs`
replaced by a `static_configs` (everything else, relabelling included, as written), and
the discovery blocks are checked here against their documented fields. An upstream
promtool checks the file as it is.

promtool missing: a failure in CI (CI=true), a skip elsewhere (tests/backends.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.backends import unavailable
from tests.server import base_env, serve, work

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
CONFIGS = ("prometheus.yml", "prometheus.static.yml")
K8S = ROOT / "deploy" / "k8s" / "base"
JOBS = {"surge": ("server", 9181), "surge-worker": ("worker", 9180)}

# what a PromQL expression names that is not a metric
_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip
# Prometheus's own series (up: the scrape of a target succeeded)
_SYNTHETIC = {"up"}
_KUBERNETES_SD_FIELDS = {
    "role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata",
    "basic_auth", "authorization", "oauth2", "tls_config", "proxy_url", "follow_redirects",
    "enable_http2", "bearer_token", "bearer_token_file",
}  # fmt: skip


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = (
            "promtool is not installed (Debian package prometheus: scripts/install-system-deps.sh)"
        )
        unavailable(message)
    return found


def run_promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: identifiers that are not functions (followed by
    `(`), keywords, label names (in braces, or in by/on/without/ignoring/group_* lists),
    recorded series (`level:metric:operation`, defined in the file), durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*+)(?!\s*\()", text):
        name = match.group(1)
        if name.lower() in _PROMQL_WORDS or ":" in name or name in _SYNTHETIC:
            continue
        names.add(name)
    return names


# -- promtool -------------------------------------------------------------------------------


def test_rules_check() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests() -> None:
    result = run_promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_static_config_check() -> None:
    result = run_promtool("check", "config", "prometheus.static.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_kubernetes_config_check(tmp_path: Path) -> None:
    result = run_promtool("check", "config", "prometheus.yml")
    output = result.stdout + result.stderr
    if "field kubernetes_sd_configs not found" in output:
        # Debian's promtool: no Kubernetes discovery compiled in (see the module's doc)
        config = load(PROMETHEUS / "prometheus.yml")
        for job in config["scrape_configs"]:
            for sd in job.pop("kubernetes_sd_configs", []):
                check_kubernetes_sd(sd)
                job.setdefault("static_configs", []).append({"targets": ["10.0.0.1:8080"]})
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        shutil.copy(ALERTS, tmp_path / ALERTS.name)
        result = run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)
        output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output


def check_kubernetes_sd(sd: dict[str, Any]) -> None:
    assert set(sd) <= _KUBERNETES_SD_FIELDS, set(sd) - _KUBERNETES_SD_FIELDS
    assert sd["role"] == "pod"
    names = sd.get("namespaces", {}).get("names", [])
    assert isinstance(names, list) and all(isinstance(n, str) for n in names)


# -- the rules' shape -------------------------------------------------------------------------


def test_every_alert_is_complete() -> None:
    found = alerts()
    assert len(found) >= 12
    for alert in found:
        name = alert["alert"]
        assert alert.get("for"), f"{name}: no for:"
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description", "runbook"} <= set(alert["annotations"]), name


def test_every_alert_is_unit_tested_both_ways() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in load(PROMETHEUS / "alerts.test.yml")["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert names <= fires, f"never fired: {sorted(names - fires)}"
    assert names <= quiet, f"never tested quiet: {sorted(names - quiet)}"


def test_recorded_series_are_defined() -> None:
    defined = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        used = set(re.findall(r"[a-zA-Z_]\w*:[\w:]+", re.sub(r'"[^"]*"', "", rule["expr"])))
        assert used <= defined, (rule.get("alert") or rule.get("record"), used - defined)


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, route, le) (rate(x_bucket{route!="a"}[5m])))'
        " / on (route) group_left () job:y:rate5m > 0.9 * z_total unless up == 0"
    )
    assert metric_names(expr) == {"x_bucket", "z_total"}


# -- the metrics exist ------------------------------------------------------------------------


def scraped_names(url: str) -> set[str]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        match.group(1)
        for line in text.splitlines()
        if (match := re.match(r"([a-zA-Z_:][\w:]*)[{ ]", line)) and not line.startswith("#")
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Every sample name an embedded `surge serve` (after some traffic, so that the
    per-route series exist) and a `surge worker` export."""
    served = tmp_path_factory.mktemp("serve")
    worked = tmp_path_factory.mktemp("worker")
    with (
        serve(base_env(served), served) as server,
        work(base_env(worked), worked) as worker,
    ):
        with server.client() as client:
            assert client.get("/orders/1").status_code == 401  # no token: still a route
            assert client.get("/nowhere").status_code == 404
        yield scraped_names(server.internal_url) | scraped_names(worker.url)


@pytest.mark.slow
def test_every_metric_in_the_rules_is_exported(exported: set[str]) -> None:
    used = {name for rule in rules() for name in metric_names(rule["expr"])}
    # the parser found what the alerts are about (a parser finding nothing passes nothing)
    assert {"http_requests_total", "breaker_open", "outbox_lag_seconds"} <= used
    assert used - exported == set(), (
        f"not exported by surge serve or surge worker: {sorted(used - exported)}"
    )


# -- Kubernetes: the manifests carry what the discovery keeps ------------------------------


@pytest.mark.parametrize("job", sorted(JOBS))
def test_kubernetes_pods_match_the_discovery(job: str) -> None:
    component, port = JOBS[job]
    manifest = K8S / f"{component}-deployment.yaml"
    if not manifest.exists():
        pytest.skip(f"{manifest.relative_to(ROOT)} does not exist yet")
    config = next(
        j for j in load(PROMETHEUS / "prometheus.yml")["scrape_configs"] if j["job_name"] == job
    )
    keep = next(
        r
        for r in config["relabel_configs"]
        if r.get("action") == "keep" and len(r["source_labels"]) == 2
    )
    deployment = next(
        d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "Deployment"
    )
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert (
        f"{labels['app.kubernetes.io/name']};{labels['app.kubernetes.io/component']}"
        == keep["regex"]
    )
    namespaces = config["kubernetes_sd_configs"][0].get("namespaces", {}).get("names")
    if namespaces:
        assert deployment["metadata"].get("namespace") in namespaces
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    declared = {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    if declared:
        assert port in declared, f"{manifest.name}: port {port} not among {sorted(declared)}"
