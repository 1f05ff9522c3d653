"""Redis Cluster without a server: the URL, and the key names that keep each multi-key
step in one hash slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from surge import config
from surge.backends.redis_backplane import CLUSTER_SHARDS, RedisBackplane
from surge.ground.redis_urls import ClusterAddress, is_cluster, parse_cluster_url


def test_seed_nodes_credentials_and_tls_are_read() -> None:
    assert parse_cluster_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001") == ClusterAddress(
        (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    )
    assert parse_cluster_url("rediss+cluster://app:s%40cret@[::1]:7000/") == ClusterAddress(
        (("::1", 7000),), "app", "s@cret", True
    )
    assert is_cluster("redis+cluster://h:1") and not is_cluster("redis://h:1/0")
    assert parse_cluster_url("redis+cluster://h:1/0").nodes == (("h", 1),)


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://h",  # no port
        "redis+cluster://h:0",
        "redis+cluster://h:70000",
        "redis+cluster://h:1,,h:2",
        "redis+cluster://h:1/2",  # a cluster has database 0 only
        "redis+cluster://h:1#x",
        "redis+cluster://h:1?timeout=3",
        "redis://h:1",
    ],
)
def test_bad_cluster_urls_are_refused_with_a_reason(url: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_cluster_url(url)


def test_settings_take_a_cluster_url_and_refuse_a_broken_one() -> None:
    settings = config.load({"SURGE_REDIS_URL": "redis+cluster://127.0.0.1:7000"})
    assert settings.redis_url == "redis+cluster://127.0.0.1:7000"
    with pytest.raises(config.ConfigError, match="HOST:PORT"):
        config.load({"SURGE_REDIS_URL": "redis+cluster://127.0.0.1"})
    with pytest.raises(config.ConfigError, match="must not contain"):
        config.load({"SURGE_REDIS_PREFIX": "app{1}:"})  # it would be the hash tag


class _NoScripts:
    def register_script(self, _source: str) -> None:
        return None


@pytest.mark.parametrize("room", ["chat:lobby", "sale:1", "sale:77", "chat:{odd}", "chat:ü"])
def test_a_rooms_keys_and_channel_share_one_slot_on_a_cluster(room: str) -> None:
    """The publish script SPUBLISHes on the node that runs it: the room's channel must
    hash to the slot of its keys, or the subscribers (on the channel's node) miss it."""
    plane = RedisBackplane(_NoScripts(), None, "surge:", shards=CLUSTER_SHARDS)  # type: ignore[arg-type]
    slots = {key_slot(key.encode()) for key in plane._keys(room)}
    assert slots == {key_slot(("surge:" + plane._channel(room)).encode())}


def test_rooms_spread_over_the_groups() -> None:
    plane = RedisBackplane(_NoScripts(), None, "surge:", shards=CLUSTER_SHARDS)  # type: ignore[arg-type]
    groups = {plane._channel(f"chat:{i}") for i in range(2000)}
    assert len(groups) == CLUSTER_SHARDS
