from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.testing import MemoryReactorClock as Clock

from speedproxy.cluster.node import FleetNode, node_name, start_fleet
from speedproxy.cluster.purge_bus import FleetCacheFanout
from speedproxy.config.model import ClusterConfig, Config


def _control(config: Config) -> Any:
    return SimpleNamespace(config=config, cache_fanout=SimpleNamespace(each=None), reactor=Clock())


def test_node_name_defaults_to_the_host_name() -> None:
    import socket

    assert node_name(Config()) == socket.gethostname()
    assert node_name(Config(cluster=ClusterConfig(node_name="edge-9"))) == "edge-9"


def test_no_redis_no_fleet() -> None:
    assert start_fleet(_control(Config())) is None


def test_degraded_and_metrics_while_redis_is_away() -> None:
    config = Config(cluster=ClusterConfig(redis="redis://127.0.0.1:1/0", node_name='we"ird'))
    control = _control(config)
    clock = control.reactor
    fleet = FleetNode(clock, config, control, dict)
    fleet.start()
    try:
        assert isinstance(control.cache_fanout, FleetCacheFanout)
        assert "unreachable" in fleet.degraded()[0]
        text = fleet.metrics_text().decode()
        assert 'speedproxy_redis_up{node="we\\"ird"} 0' in text
        assert 'speedproxy_cluster_nodes{node="we\\"ird"} 0' in text
        fleet.link._set_up(True)
        assert fleet.degraded() == [] and fleet.down_since is None
        fleet.link._set_up(False, "gone")
        assert fleet.outages == 1 and "gone" in fleet.degraded()[0]
    finally:
        fleet.stop()
    assert control.cache_fanout is fleet.local_fanout
