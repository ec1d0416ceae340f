"""The ``cluster`` and ``accounting`` sections of the config file."""

from __future__ import annotations

from typing import List

import pytest

from speedproxy.config import ConfigError, config_from_mapping, config_to_mapping, parse_config
from speedproxy.config.model import AccountingConfig, ClusterConfig, Config, restart_required


def errors(text: str) -> List[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "speedproxy.yaml")
    return caught.value.errors if hasattr(caught.value, "errors") else str(caught.value).splitlines()


def test_defaults_are_a_lone_node_without_accounting() -> None:
    config = parse_config("")
    assert config.cluster == ClusterConfig() and config.cluster.redis == ""
    assert config.accounting == AccountingConfig() and not config.accounting.enabled
    assert "cluster" not in config_to_mapping(config) and "accounting" not in config_to_mapping(config)


def test_a_full_section_round_trips() -> None:
    config = parse_config(
        "cluster:\n"
        "  redis: \"sentinel://s1:26379,s2/mymaster/1\"\n"
        "  node_name: edge-1\n"
        "  heartbeat: 1s\n"
        "  timeout: 250ms\n"
        "  key_prefix: \"spx:\"\n"
        "accounting:\n"
        "  redis_stream: spx:acct\n"
        "  interval: 5s\n"
        "  max_buffer: 100\n"
        "  routes: [default]\n"
        "  api_key_header: X-Token\n"
    )
    assert config.cluster == ClusterConfig("sentinel://s1:26379,s2/mymaster/1", "edge-1", 1.0, 0.25, "spx:")
    assert config.accounting == AccountingConfig(5.0, "spx:acct", "", 100, ("default",), "X-Token")
    assert config.accounting.enabled
    again = config_from_mapping(config_to_mapping(config))
    assert (again.cluster, again.accounting) == (config.cluster, config.accounting)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("cluster: {redis: \"http://r/0\"}\n", "speedproxy.yaml:1: cluster.redis: expected \"redis://host:port/db\""),
        ("cluster: {redis: \"redis://a,b/0\"}\n", "speedproxy.yaml:1: cluster.redis: a redis:// address names one server"),
        ("cluster: {redis: \"sentinel://s1\"}\n", "speedproxy.yaml:1: cluster.redis: a sentinel:// address needs the service name"),
        ("cluster: {node_name: \"edge 1\"}\n", "speedproxy.yaml:1: cluster.node_name: expected letters"),
        ("cluster: {heartbeat: 0s}\n", "speedproxy.yaml:1: cluster.heartbeat:"),
        ("cluster:\n  nodename: x\n", "speedproxy.yaml:2: cluster.nodename: unknown key 'nodename'; did you mean 'node_name'?"),
        ("accounting:\n  redis_stream: s\n", "speedproxy.yaml:2: accounting.redis_stream: needs cluster.redis"),
        ("cluster: {redis: \"redis://r\"}\naccounting:\n  redis_stream: s\n  collector: \"http://c/\"\n",
         "speedproxy.yaml:4: accounting.collector: give redis_stream or collector, not both"),
        ("accounting: {collector: \"ftp://c/\"}\n", "speedproxy.yaml:1: accounting.collector: expected an http(s) URL"),
        ("accounting: {max_buffer: 0}\n", "speedproxy.yaml:1: accounting.max_buffer:"),
    ],
)
def test_bad_values_name_file_line_and_key(text: str, problem: str) -> None:
    found = errors(text)
    assert any(line.startswith(problem) for line in found), found


def test_cluster_and_accounting_destinations_need_a_restart() -> None:
    base = Config()
    assert restart_required(base, Config(cluster=ClusterConfig(redis="redis://r"))) == ["cluster"]
    changed = restart_required(base, Config(accounting=AccountingConfig(collector="http://c/")))
    assert len(changed) == 1 and changed[0].startswith("accounting")
    assert restart_required(Config(accounting=AccountingConfig(collector="http://c/")),
                            Config(accounting=AccountingConfig(collector="http://c/", routes=("a",)))) == []


def test_accounted_routes_must_exist() -> None:
    found = errors("accounting:\n  collector: \"http://c/\"\n  routes:\n    - default\n    - vidoe\n")
    assert found == ["speedproxy.yaml:5: accounting.routes[1]: no route 'vidoe' (known: default)"]
