from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from surge import config


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = config.load({"SURGE_DATA_DIR": str(tmp_path)})
    assert settings.embedded
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'surge.db'}"
    assert settings.redis_url is None
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8080, 1)
    assert settings.deadline == 0.05


def test_env_values_are_parsed() -> None:
    settings = config.load(
        {
            "SURGE_DATABASE_URL": "mysql://root@127.0.0.1/test",
            "SURGE_REDIS_URL": "redis://127.0.0.1:6379/2",
            "SURGE_WORKERS": "4",
            "SURGE_DEADLINE_MS": "80",
            "SURGE_NEAR_CACHE_TTL": "1.5",
        }
    )
    assert not settings.embedded
    assert settings.workers == 4
    assert settings.deadline == pytest.approx(0.08)
    assert settings.near_cache_ttl == 1.5


def test_cli_overrides_env() -> None:
    settings = config.load({"SURGE_PORT": "9000"}, {"port": "9001"})
    assert settings.port == 9001


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SURGE_DATABASE_URL": "oracle://x"}, "valid: sqlite, mysql, mariadb, postgresql"),
        ({"SURGE_REDIS_URL": "memcached://x"}, "valid: redis, rediss"),
        ({"SURGE_PORT": "70000"}, "SURGE_PORT='70000'"),
        ({"SURGE_WORKERS": "0"}, "must be >= 1"),
        ({"SURGE_WORKERS": "many"}, "SURGE_WORKERS='many'"),
        ({"SURGE_ENV": "staging"}, "must be one of development, production"),
        ({"SURGE_CACHE_JITTER": "1.5"}, "must be in [0, 1)"),
        ({"SURGE_NEAR_CACHE_TTL": "nan"}, "must be >= 0"),
        ({"SURGE_WORKERS": "2"}, "needs SURGE_REDIS_URL"),
        ({"SURGE_JWT_SECRET": "short"}, "at least 32 characters"),
    ],
)
def test_bad_values_stop_with_one_clear_line(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(env)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_a_secret_is_required_beside_shared_servers() -> None:
    settings = config.load({"SURGE_REDIS_URL": "redis://127.0.0.1"})
    with pytest.raises(config.ConfigError, match="SURGE_JWT_SECRET is required"):
        config.check_secret(settings)


def test_production_refuses_a_generated_secret(tmp_path: Path) -> None:
    settings = config.load({"SURGE_ENV": "production", "SURGE_DATA_DIR": str(tmp_path)})
    with pytest.raises(config.ConfigError, match="production"):
        config.check_secret(settings)
    config.check_secret(config.load({"SURGE_DATA_DIR": str(tmp_path)}))  # embedded dev: fine


def test_config_imports_nothing_else_from_surge() -> None:
    code = (
        "import sys, surge.config\n"
        "env = {'SURGE_TRUSTED_PROXIES': '10.0.0.0/8', 'SURGE_RATE_LIMIT_READ': '5/10'}\n"
        "assert surge.config.load(env).trusted_networks\n"
        "print(*sorted(m for m in sys.modules if 'surge' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # (the ground floor's reader of Redis URLs, pure: it imports nothing either)
    assert out.stdout.split() == [
        "surge",
        "surge.config",
        "surge.config_limits",
        "surge.ground",
        "surge.ground.redis_urls",
        "surge.setting_parsers",
    ]


def test_every_field_has_a_flag_and_env_name() -> None:
    names = {f.name for f in config.FIELDS}
    assert names == set(config.Settings.__dataclass_fields__)
    assert all(f.env.startswith("SURGE_") and f.flag.startswith("--") for f in config.FIELDS)


def test_route_deadlines_override_the_defaults() -> None:
    settings = config.load(
        {
            "SURGE_DEADLINE_MS": "80",
            "SURGE_ROUTE_DEADLINES": "post /sales/{id}/orders=1500, GET /sales/{id}=300 ,",
        }
    )
    assert settings.route_deadline("POST /sales/{id}/orders") == 1.5
    assert settings.route_deadline("GET /sales/{id}") == 0.3
    assert settings.route_deadline("GET /orders/{id}") == pytest.approx(0.08)  # its default
    assert settings.route_deadline("POST /sales") == 2.0  # the write default


@pytest.mark.parametrize("text", ["GET /sales", "FETCH /sales=5", "GET sales=5", "GET /x=0"])
def test_bad_route_deadlines_are_refused(text: str) -> None:
    with pytest.raises(config.ConfigError, match="SURGE_ROUTE_DEADLINES"):
        config.load({"SURGE_ROUTE_DEADLINES": text})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SURGE_RATE_LIMIT_READ": "fast"}, "SURGE_RATE_LIMIT_READ"),
        ({"SURGE_RATE_LIMIT_STORE": "redis"}, "needs SURGE_REDIS_URL"),
        ({"SURGE_SHED": "sometimes"}, "SURGE_SHED"),
        ({"SURGE_MAX_IN_FLIGHT": "10", "SURGE_SHED_MIN_LIMIT": "20"}, "must not exceed"),
        ({"SURGE_SHED_TOLERANCE": "0.5"}, ">= 1"),
        ({"SURGE_READY_REQUIRES": "database,kafka"}, "kafka"),
        ({"SURGE_TRUSTED_PROXIES": "10.0.0.0/8,nope"}, "nope"),
    ],
)
def test_protection_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.load(env)


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(" `")
        for line in readme.splitlines()
        if line.startswith("| `SURGE_")
    }
    assert rows == {field.env for field in config.FIELDS}
