"""Config keys for panic routing and the backend queue: ``panic_threshold``, ``queue_timeout``, ``queue_size``."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from speedproxy.config import ConfigError, config_from_mapping, config_to_mapping, parse_config

GROUP = """\
backends:
  default:
    - {id: a, host: h, port: 1%s}
    - {id: b, host: h, port: 2%s}
"""


def test_defaults() -> None:
    config = parse_config("")
    assert config.server.panic_threshold == 50.0
    assert config.server.queue_timeout == 5.0
    assert config.server.queue_size == 1000
    assert config.backends["default"][0].health_check is None


@pytest.mark.parametrize("value, percent", [('"30%"', 30.0), ("30", 30.0), ("12.5", 12.5), ("0", 0.0),
                                            ('"100 %"', 100.0), ('"7"', 7.0)])
def test_panic_threshold_is_a_percentage(value: str, percent: float) -> None:
    assert parse_config(f"server: {{panic_threshold: {value}}}\n").server.panic_threshold == percent
    check = parse_config(GROUP % (f", health_check: {{panic_threshold: {value}}}", "")).backends["default"][0]
    assert check.health_check is not None and check.health_check.panic_threshold == percent


def test_queue_settings() -> None:
    server = parse_config("server: {queue_timeout: 250ms, queue_size: 10}\n").server
    assert (server.queue_timeout, server.queue_size) == (0.25, 10)
    server = parse_config("server: {queue_timeout: 0, queue_size: 0}\n").server
    assert (server.queue_timeout, server.queue_size) == (0.0, 0)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("server:\n  panic_threshold: 120%\n", "f.yaml:2: server.panic_threshold: must be between 0% and 100%"),
        ("server:\n  panic_threshold: -1\n", "f.yaml:2: server.panic_threshold: must be between 0% and 100%"),
        ("server:\n  panic_threshold: half\n", "f.yaml:2: server.panic_threshold: expected a percentage"),
        ("server:\n  panic_threshold: true\n", "f.yaml:2: server.panic_threshold: expected a percentage"),
        ("server:\n  queue_timeout: soon\n", "f.yaml:2: server.queue_timeout:"),
        ("server:\n  queue_size: -1\n", "f.yaml:2: server.queue_size: must be at least 0"),
        ("server:\n  queue_size: 1.5\n", "f.yaml:2: server.queue_size: expected an integer"),
        ("server:\n  queue_sise: 1\n", "f.yaml:2: server.queue_sise: unknown key 'queue_sise'; did you mean 'queue_size'?"),
        (
            "backends:\n  default:\n    - {id: a, host: h, port: 1, health_check: {panic_threshold: 101}}\n",
            "f.yaml:3: backends.default[0].health_check.panic_threshold: must be between 0% and 100%",
        ),
    ],
)
def test_bad_values_name_file_line_and_key(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    assert problem in str(info.value), str(info.value)


def test_backends_of_one_group_must_agree_on_the_threshold() -> None:
    text = GROUP % (", health_check: {panic_threshold: 20%}", ", health_check: {panic_threshold: 30}")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("f.yaml:4: backends.default[1].health_check.panic_threshold: 30% differs from 20%")
    assert "backends.default[0].health_check.panic_threshold" in problem


def test_backends_that_agree_or_leave_it_unset_are_fine() -> None:
    same = GROUP % (", health_check: {panic_threshold: 20%}", ", health_check: {panic_threshold: 20}")
    assert parse_config(same).backends["default"][1].health_check.panic_threshold == 20.0  # type: ignore[union-attr]
    partly = GROUP % (", health_check: {panic_threshold: 20%}", ", health_check: {path: /hc}")
    assert parse_config(partly).backends["default"][1].health_check.panic_threshold is None  # type: ignore[union-attr]
    other_groups = GROUP % (", health_check: {panic_threshold: 20%}", "") + (
        "  other:\n    - {id: c, host: h, port: 3, health_check: {panic_threshold: 70%}}\n"
    )
    parse_config(other_groups + "routing:\n  default: {path: /, upstream: default}\n")


def test_the_api_gets_the_same_check_without_lines() -> None:
    data = yaml.safe_load(GROUP % (", health_check: {panic_threshold: 20}", ", health_check: {panic_threshold: 40}"))
    with pytest.raises(ConfigError, match=r"^<api>: backends\.default\[1\]\.health_check\.panic_threshold: 40%"):
        config_from_mapping(data)


def test_round_trip() -> None:
    config = parse_config(
        "server: {panic_threshold: 12.5%, queue_timeout: 300ms, queue_size: 7}\n"
        + GROUP % (", health_check: {panic_threshold: 20%}", ", health_check: {interval: 5s}")
    )
    data = config_to_mapping(config)
    assert data["server"]["panic_threshold"] == 12.5
    assert data["server"]["queue_timeout"] == "300ms"
    assert data["server"]["queue_size"] == 7
    assert data["backends"]["default"][0]["health_check"]["panic_threshold"] == 20.0
    assert "panic_threshold" not in data["backends"]["default"][1]["health_check"]  # unset stays unset
    expected = dataclasses.replace(config, source=None)
    assert config_from_mapping(data) == expected
    assert parse_config(yaml.safe_dump(data)) == expected
