"""deploy/compose.yaml, checked structurally (no container runtime can run it here): the
services the stack needs, wired the way Surge expects (settings that exist, the secret
never written into the file, start order by health, the grace period above the drain,
mounts of files that exist, Prometheus scraping the services by their names)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from surge.config import FIELDS, Settings

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
SURGE = ("migrate", "surge-1", "surge-2", "worker")
SETTINGS = {f"SURGE_{field.name.upper()}" for field in FIELDS}


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, text
    return float(match.group(1))


def test_the_stack_has_every_part() -> None:
    assert set(_services()) == {*SURGE, "redis", "mariadb", "prometheus", "grafana"}


def test_surge_services_build_the_image_and_use_real_settings() -> None:
    services = _services()
    for name in SURGE:
        service = services[name]
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == (
            ROOT / "deploy" / "Dockerfile"
        )
        env = service["environment"]
        unknown = {k for k in env if k.startswith("SURGE_")} - SETTINGS
        assert not unknown, (name, unknown)
        # the secret only from the environment or .env, and compose refuses to go without
        assert re.fullmatch(r"\$\{SURGE_JWT_SECRET:\?[^}]+\}", env["SURGE_JWT_SECRET"])
        assert env["SURGE_ENV"] == "production"
        assert service["command"][0] in {"serve", "worker", "db"}
        grace = _seconds(service["stop_grace_period"])
        defaults = Settings()
        assert grace > defaults.shutdown_delay + defaults.drain_timeout + 1, name


def test_start_order_follows_health() -> None:
    services = _services()
    for name in ("redis", "mariadb"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["depends_on"]["mariadb"]["condition"] == "service_healthy"
    for name in ("surge-1", "surge-2", "worker"):
        after = services[name]["depends_on"]
        assert after["migrate"]["condition"] == "service_completed_successfully", name
        assert after["redis"]["condition"] == "service_healthy", name
    ports = {p for name in ("surge-1", "surge-2") for p in services[name]["ports"]}
    assert {p.split(":")[1] for p in ports} == {"8080"}
    assert len({p.split(":")[0] for p in ports}) == 2  # two host ports, one per server


def test_mounts_exist_and_prometheus_scrapes_the_services() -> None:
    services = _services()
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (COMPOSE.parent / source).exists(), (name, source)
    mounted = {
        volume.split(":")[1]: COMPOSE.parent / volume.split(":")[0]
        for volume in services["prometheus"]["volumes"]
    }
    config = yaml.safe_load(mounted["/etc/prometheus/prometheus.yml"].read_text())
    targets = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }
    assert sorted(targets["surge"]) == ["surge-1:9181", "surge-2:9181"]
    assert targets["surge-worker"] == [
        f"worker:{services['worker']['environment']['SURGE_WORKER_PORT']}"
    ]
    for rules in config["rule_files"]:  # beside the config, as mounted
        assert f"/etc/prometheus/{rules}" in mounted


def test_the_secret_file_is_never_committed() -> None:
    assert ".env" in (COMPOSE.parent / ".gitignore").read_text().split()
    assert (
        not (COMPOSE.parent / ".env").exists()
        or ".env" in (COMPOSE.parent / ".gitignore").read_text()
    )
