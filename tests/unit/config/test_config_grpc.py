"""The ``grpc`` section and a backend's ``name`` (SpeedMimi's config keys) in the loader."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any, List

import pytest

from speedproxy.admin import grpc as grpc_package
from speedproxy.config import ConfigError, config_from_mapping, config_to_mapping, parse_config
from speedproxy.config.model import BackendConfig, Config, GrpcConfig, restart_required

BACKEND = """\
backends:
  default:
    - id: "backend1"
      name: "Backend Server 1"
      host: "127.0.0.1"
      port: 8081
"""


def problems(text: str) -> List[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(textwrap.dedent(text), "speedproxy.yaml")
    return raised.value.problems


@pytest.fixture
def grpc_importable(monkeypatch: Any) -> None:
    """Whatever this interpreter has, the loader sees grpcio as importable."""
    monkeypatch.setattr(grpc_package, "grpc_missing", lambda: None)


def test_defaults() -> None:
    config = parse_config("")
    assert config.grpc == GrpcConfig(enabled=False, host="127.0.0.1", port=9090)
    assert BackendConfig(id="x").name == ""
    assert "grpc" not in config_to_mapping(config)


def test_speedmimis_section_and_name(grpc_importable: None) -> None:
    config = parse_config(BACKEND + 'grpc:\n  enabled: true\n  host: "127.0.0.1"\n  port: 9090\n')
    assert config.grpc == GrpcConfig(enabled=True, host="127.0.0.1", port=9090)
    assert config.backends["default"][0].name == "Backend Server 1"
    data = config_to_mapping(config)
    assert data["grpc"] == {"enabled": True, "host": "127.0.0.1", "port": 9090}
    assert data["backends"]["default"][0]["name"] == "Backend Server 1"
    assert dataclasses.replace(config_from_mapping(data), source=None) == config


def test_an_unnamed_backend_is_dumped_without_a_name() -> None:
    assert "name" not in config_to_mapping(parse_config(BACKEND.replace('      name: "Backend Server 1"\n', "")))["backends"]["default"][0]


def test_wrong_values_name_the_file_line_and_key(grpc_importable: None) -> None:
    found = problems(BACKEND + "grpc:\n  enabled: maybe\n  port: 70000\n  host: ''\n  tls: on\n")
    assert found == [
        'speedproxy.yaml:8: grpc.enabled: expected a boolean (true or false), got "maybe"',
        "speedproxy.yaml:9: grpc.port: must be between 1 and 65535, got 70000",
        "speedproxy.yaml:10: grpc.host: must not be empty",
        "speedproxy.yaml:11: grpc.tls: unknown key 'tls'",
    ]
    assert problems(BACKEND.replace("name:", "nmae:"))[0].startswith(
        "speedproxy.yaml:4: backends.default[0].nmae: unknown key 'nmae'; did you mean 'name'?"
    )
    assert problems(BACKEND.replace('"Backend Server 1"', "[1, 2]"))[0].startswith("speedproxy.yaml:4: backends.default[0].name:")


def test_grpc_enabled_without_grpcio_is_an_error(monkeypatch: Any) -> None:
    monkeypatch.setattr(grpc_package, "grpc_missing", lambda: "the gRPC management service needs grpcio, which ...")
    assert problems("grpc:\n  enabled: true\n") == [
        "speedproxy.yaml:2: grpc.enabled: the gRPC management service needs grpcio, which ..."
    ]
    assert parse_config("grpc:\n  enabled: false\n").grpc.enabled is False  # no grpcio needed


def test_a_grpc_change_needs_a_restart() -> None:
    old = Config()
    assert restart_required(old, dataclasses.replace(old, grpc=GrpcConfig(port=9191))) == ["grpc"]
    assert restart_required(old, old) == []
