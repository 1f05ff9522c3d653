"""deploy/grafana (issue 14, item 6): the dashboard and its provisioning.

- surge.json parses, its panels have unique ids and titles, fit the 24-column grid
  without overlapping, and each one queries the `${datasource}` variable with at least
  one PromQL expression and says in its description what it shows;
- every expression is valid PromQL: all of them, with `$__rate_interval` and the
  template variables replaced by fixed values, go into a rule file as recording rules
  and `promtool check rules` reads it (promtool: test_prometheus.py's helpers; missing,
  a failure in CI, a skip elsewhere);
- every metric the panels and the template variables query is exported by a real
  `surge serve` (internal listener) or `surge worker`; the server runs with Redis, so
  that the Redis pool gauges exist, and a family the process declares without samples
  yet (`purchases_total` before the first purchase) counts as exported;
- the provisioning files parse; the data source is the compose Prometheus and the
  dashboard provider reads the directory the dashboard is mounted in.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.backends import REDIS, require_service
from tests.deploy.test_prometheus import load, metric_names, run_promtool, scraped_names
from tests.server import base_env, serve, work

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "surge.json"
PROVISIONING = GRAFANA / "provisioning"
DASHBOARDS_DIR = "/var/lib/grafana/dashboards"
COMPOSE = ROOT / "deploy" / "compose.yaml"

# fixed values for what Grafana substitutes before sending a query
SUBSTITUTES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "job": "surge",
    "instance": ".*",
    "worker_job": "surge-worker",
    "worker_instance": ".*",
}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_LABEL_VALUES = re.compile(
    r"label_values\(\s*(?:([a-zA-Z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,)?\s*\w+\s*\)"
)

# what each part of the dashboard is about (issue 14, item 6): a panel must query each
REQUIRED = {
    "http_requests_total", "http_request_duration_seconds_bucket", "cache_hits_total",
    "cache_misses_total", "db_pool_in_use", "db_pool_size", "redis_in_flight",
    "redis_pool_size", "breaker_open", "purchases_total", "gate_reconciliations_total",
    "gate_corrections_total", "gate_stale_reservations_total", "ws_connections",
    "ws_fanout_seconds_bucket", "ws_dropped_slow_total", "shed_total",
    "outbox_lag_seconds", "stream_pending", "dead_letters",
}  # fmt: skip


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    """Every panel but the rows (which only group the others)."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[tuple[str, str]]:
    """(panel id and refId, expression) of every target."""
    return [(f"{p['id']}_{t['refId']}", t["expr"]) for p in panels() for t in p["targets"]]


def substitute(expr: str) -> str:
    return _VARIABLE.sub(lambda m: SUBSTITUTES[m.group(1) or m.group(2)], expr)


def variable_queries() -> list[str]:
    return [v["definition"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]


# -- the dashboard's shape ------------------------------------------------------------------


def test_dashboard_parses() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance", "worker_job", "worker_instance"} <= set(variables)


def test_panel_ids_and_titles_are_unique() -> None:
    every = dashboard()["panels"]
    ids = [p["id"] for p in every]
    titles = [p["title"] for p in every]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert len(titles) == len(set(titles)), sorted(t for t in titles if titles.count(t) > 1)
    assert len(panels()) >= 25


def test_panels_fit_the_grid() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_every_panel_queries_prometheus_and_is_described() -> None:
    for panel in panels():
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], f"{title}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{title} {target['refId']}: empty expr"
            assert target["datasource"]["uid"] == "${datasource}", title
        assert len(panel.get("description", "")) >= 80, f"{title}: no real description"


def test_every_variable_is_defined() -> None:
    defined = {v["name"] for v in dashboard()["templating"]["list"]}
    builtins = {"__rate_interval", "__interval", "__range"}
    for where, expr in [*expressions(), *(("variable", q) for q in variable_queries())]:
        for match in _VARIABLE.finditer(expr):
            name = match.group(1) or match.group(2)
            assert name in defined | builtins, f"{where}: ${name} is not defined"
            assert name in SUBSTITUTES, f"{where}: no test value for ${name}"


# -- valid PromQL ---------------------------------------------------------------------------


def check_rules(tmp_path: Path, exprs: list[tuple[str, str]]) -> tuple[bool, str]:
    rules = [{"record": f"grafana:panel_{name}", "expr": substitute(e)} for name, e in exprs]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    return result.returncode == 0, result.stdout + result.stderr


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    exprs = expressions()
    assert all("$" not in substitute(e) for _, e in exprs)
    ok, output = check_rules(tmp_path, exprs)
    assert ok, output
    assert f"SUCCESS: {len(exprs)} rules found" in output


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The check above would catch a typo: a bracket missing in one expression."""
    ok, output = check_rules(tmp_path, [("1_A", "sum(rate(http_requests_total[$__rate_interval])")])
    assert not ok, output


# -- the metrics exist ----------------------------------------------------------------------


def used_metrics() -> set[str]:
    used = {name for _, expr in expressions() for name in metric_names(substitute(expr))}
    for query in variable_queries():
        match = _LABEL_VALUES.fullmatch(query.strip())
        assert match, f"not a label_values() query: {query}"
        if match.group(1):
            used.add(match.group(1))
    return used


def test_dashboard_covers_every_part() -> None:
    used = used_metrics()
    assert REQUIRED <= used, f"no panel queries {sorted(REQUIRED - used)}"


def declared_names(url: str) -> set[str]:
    """The sample names of every family a process declares (`# TYPE`), samples or not."""
    kinds = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
    names = set()
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if match := re.match(r"# TYPE ([a-zA-Z_:][\w:]*) (\w+)", line):
            names |= {match.group(1) + end for end in kinds.get(match.group(2), ("",))}
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Every name an embedded `surge serve` with Redis (after a request, so that the
    per-route series exist) and a `surge worker` export or declare."""
    require_service("Redis", REDIS)
    redis = {
        "SURGE_REDIS_URL": f"redis://{REDIS[0]}:{REDIS[1]}/0",
        "SURGE_REDIS_PREFIX": f"surge-test-{uuid.uuid4().hex[:12]}:",
    }
    served = tmp_path_factory.mktemp("serve")
    worked = tmp_path_factory.mktemp("worker")
    with (
        serve(base_env(served, redis), served) as server,
        work(base_env(worked, redis), worked) as worker,
    ):
        with server.client() as client:
            assert client.get("/orders/1").status_code == 401  # no token: still a route
        urls = (server.internal_url, worker.url)
        yield {name for url in urls for name in scraped_names(url) | declared_names(url)}


@pytest.mark.slow
def test_every_metric_in_the_dashboard_is_exported(exported: set[str]) -> None:
    used = used_metrics()
    assert used - exported == set(), (
        f"not exported by surge serve or surge worker: {sorted(used - exported)}"
    )


# -- provisioning ---------------------------------------------------------------------------


def test_datasource_provisioning() -> None:
    files = sorted((PROVISIONING / "datasources").glob("*.yml"))
    assert files
    sources = [s for f in files for s in load(f)["datasources"]]
    assert [s["type"] for s in sources] == ["prometheus"]
    assert sources[0]["url"] == "http://prometheus:9090"
    assert sources[0]["access"] == "proxy"
    assert sources[0].get("isDefault") is True  # the `${datasource}` variable's default


def test_dashboard_provisioning() -> None:
    files = sorted((PROVISIONING / "dashboards").glob("*.yml"))
    assert files
    providers = [p for f in files for p in load(f)["providers"]]
    assert len(providers) == 1
    provider = providers[0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARDS_DIR


def test_compose_mounts_the_dashboard_where_the_provider_reads() -> None:
    if not COMPOSE.exists():
        pytest.skip(f"{COMPOSE.relative_to(ROOT)} does not exist yet")
    services = load(COMPOSE)["services"]
    grafana = next(s for name, s in services.items() if "grafana" in name)
    mounts = {}
    for volume in grafana.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[target] = (COMPOSE.parent / source).resolve()
    dashboard_mounted = mounts.get(f"{DASHBOARDS_DIR}/{DASHBOARD.name}") == DASHBOARD
    directory_mounted = mounts.get(DASHBOARDS_DIR) == GRAFANA
    assert dashboard_mounted or directory_mounted, mounts
    assert mounts.get("/etc/grafana/provisioning") == PROVISIONING, mounts
