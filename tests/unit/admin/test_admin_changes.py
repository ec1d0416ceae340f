"""Tests for :mod:`speedproxy.admin.changes`."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from speedproxy.admin.changes import (
    MASK,
    add_backend,
    config_from_body,
    masked_mapping,
    problem_path,
    remove_backend,
    update_backend,
    write_config_file,
)
from speedproxy.admin.json_resource import APIError
from speedproxy.config import config_to_mapping, load_config, parse_config
from speedproxy.config.model import restart_required

BASE = """\
admin: {api_key: topsecret}
backends:
  default:
    - {id: a, host: 10.0.0.1, port: 80}
    - {id: b, host: 10.0.0.2, port: 80, health_check: {path: /hc, interval: 5s}}
  "odd name":
    - {id: z, host: 10.0.0.9, port: 80}
routing:
  default: {path: /, upstream: default}
"""


@pytest.fixture
def config():
    return dataclasses.replace(parse_config(BASE), source="/etc/speedproxy/speedproxy.yaml")


def _error(call, *args) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args)
    return info.value


def test_problem_path() -> None:
    assert problem_path("<api>: server.port: expected an integer") == "server.port"
    assert problem_path("<api>: backends.default[2]: missing required key 'port'") == "backends.default[2].port"
    assert problem_path("<api>: expected a mapping with keys ...") is None


def test_masked_mapping(config) -> None:
    assert masked_mapping(config)["admin"]["api_key"] == MASK
    assert masked_mapping(parse_config(""))["admin"]["api_key"] == ""


def test_add_backend(config) -> None:
    new = add_backend(config, "default", {"id": "c", "host": "10.0.0.3", "port": 81, "weight": 5})
    assert [b.id for b in new.backends["default"]] == ["a", "b", "c"]
    assert new.backends["default"][2].weight == 5
    assert new.source == config.source
    assert add_backend(config, "odd name", {"id": "y", "host": "h", "port": 1}).backends["odd name"][1].id == "y"


@pytest.mark.parametrize(
    "upstream, entry, status, field",
    [
        ("nope", {"id": "c", "host": "h", "port": 1}, 404, "upstream"),
        ("default", {"id": "a", "host": "h", "port": 1}, 409, "id"),
        ("default", {"id": "c", "host": "h", "port": "x"}, 400, "port"),
        ("default", {"host": "h", "port": 1}, 400, "id"),
        ("default", {"id": "c", "host": "h", "port": 1, "nope": 1}, 400, "nope"),
        ("default", {"id": "c", "host": "h", "port": 1, "health_check": {"interval": -1}}, 400, "health_check.interval"),
        ("odd name", {"id": "c", "host": "h", "port": 0}, 400, "port"),
    ],
)
def test_add_backend_refusals(config, upstream, entry, status, field) -> None:
    error = _error(add_backend, config, upstream, entry)
    assert (error.status, error.field) == (status, field)
    if status == 400:
        assert error.extra["problems"]


def test_update_backend(config) -> None:
    new = update_backend(config, "default", "b", {"weight": 0, "health_check": {"timeout": "1s"}})
    backend = new.backends["default"][1]
    assert backend.weight == 0
    assert backend.health_check.path == "/hc" and backend.health_check.timeout == 1.0
    assert update_backend(config, "default", "b", {"health_check": None}).backends["default"][1].health_check is None
    assert update_backend(config, "default", "a", {"health_check": {"path": "/x"}}).backends["default"][0].health_check.path == "/x"
    assert (_error(update_backend, config, "default", "a", {"port": 1}).field) == "port"
    assert (_error(update_backend, config, "default", "a", {}).status) == 400
    assert (_error(update_backend, config, "default", "q", {"weight": 1}).status) == 404
    assert (_error(update_backend, config, "default", "a", {"max_conn": 0}).field) == "max_conn"


def test_remove_backend(config) -> None:
    assert [b.id for b in remove_backend(config, "default", "a").backends["default"]] == ["b"]
    assert _error(remove_backend, config, "default", "q").status == 404


def test_config_from_body_keeps_a_masked_or_absent_key(config) -> None:
    data = masked_mapping(config)
    assert config_from_body(data, config).admin.api_key == "topsecret"
    del data["admin"]
    assert config_from_body(data, config).admin.api_key == "topsecret"
    data["admin"] = {"api_key": "rotated"}
    assert config_from_body(data, config).admin.api_key == "rotated"
    data["admin"] = {"api_key": ""}
    assert config_from_body(data, config).admin.api_key == ""
    error = _error(config_from_body, {"admin": {"api_key": MASK}}, parse_config(""))
    assert error.field == "admin.api_key"


def test_config_from_body_refuses_an_open_network_listener(config, monkeypatch) -> None:
    monkeypatch.delenv("SPEEDPROXY_API_KEY", raising=False)
    data = config_to_mapping(config)
    data["admin"] = {"listen": "0.0.0.0:9901", "api_key": ""}
    assert _error(config_from_body, data, config).field == "admin.api_key"


def test_restart_required(config) -> None:
    new = dataclasses.replace(config, admin=dataclasses.replace(config.admin, listen="127.0.0.1:1"))
    assert restart_required(config, new) == ["admin.listen"]
    assert restart_required(config, config) == []


def test_write_config_file(tmp_path, config) -> None:
    path = tmp_path / "speedproxy.yaml"
    path.write_text("# hand written\nserver: {port: 9}\n")
    path.chmod(0o600)
    backup = write_config_file(config, str(path))
    assert backup == str(path) + ".bak"
    assert (tmp_path / "speedproxy.yaml.bak").read_text() == "# hand written\nserver: {port: 9}\n"
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_config(str(path))
    assert loaded.backends == config.backends
    assert yaml.safe_load(path.read_text())["admin"]["api_key"] == "topsecret"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speedproxy.yaml", "speedproxy.yaml.bak"]
    fresh = tmp_path / "new.yaml"
    assert write_config_file(config, str(fresh)) == ""
    assert load_config(str(fresh)).routing == config.routing


FLEET = BASE + """\
cluster: {redis: "redis://:hunter2-secret@127.0.0.1:6379/0"}
accounting: {collector: "http://acct:pa55word@collector.internal:8000/batches"}
"""


def test_redis_and_collector_passwords_are_masked_and_kept_on_put() -> None:
    current = parse_config(FLEET)
    shown = masked_mapping(current)
    assert shown["cluster"]["redis"] == f"redis://:{MASK}@127.0.0.1:6379/0"
    assert shown["accounting"]["collector"] == f"http://acct:{MASK}@collector.internal:8000/batches"
    assert "hunter2" not in repr(shown) and "pa55word" not in repr(shown)
    kept = config_from_body(shown, current)
    assert kept.cluster.redis == current.cluster.redis
    assert kept.accounting.collector == current.accounting.collector
    shown["cluster"]["redis"] = f"redis://:{MASK}@10.9.9.9:6379/0"  # the mask cannot move to another server
    assert _error(config_from_body, shown, current).field == "cluster.redis"


def test_redis_address_may_be_a_substitution(monkeypatch) -> None:
    monkeypatch.setenv("SPX_TEST_REDIS", "redis://:hunter2@127.0.0.1:6380/1")
    config = parse_config(BASE + 'cluster: {redis: "${env:SPX_TEST_REDIS}"}\n')
    assert config.cluster.redis == "${env:SPX_TEST_REDIS}"  # kept as written, shown as written
    assert masked_mapping(config)["cluster"]["redis"] == "${env:SPX_TEST_REDIS}"
    from speedproxy.cluster.address import redis_address_of

    address = redis_address_of(config.cluster.redis)
    assert (address.hosts, address.db, address.password) == ((("127.0.0.1", 6380),), 1, "hunter2")
    monkeypatch.delenv("SPX_TEST_REDIS")
    with pytest.raises(Exception, match="SPX_TEST_REDIS is not set"):
        parse_config(BASE + 'cluster: {redis: "${env:SPX_TEST_REDIS}"}\n')
