"""Tests for :mod:`speedproxy.config.kinds`: each kind reads back what it writes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from speedproxy.config import kinds
from speedproxy.config.located import from_python
from speedproxy.config.problems import ConfigError, Problems
from speedproxy.config.schema import Kind


def written_and_read(kind: Kind, value: Any) -> Any:
    """*value* written by *kind*, through YAML (as persist writes it) and read again."""
    text = yaml.safe_dump({"key": kind.write(value)})
    data = json.loads(json.dumps(yaml.safe_load(text)))  # and as the admin API's JSON
    problems = Problems("t.yaml")
    result = kind.read(problems, from_python(problems, data["key"], "key"), "key")
    problems.raise_if_any()
    return result


@given(st.integers(0, 10**7).map(lambda ms: ms / 1000) | st.floats(0, 10**6, allow_nan=False))
def test_a_duration_reads_back_what_it_writes(seconds: float) -> None:
    assert written_and_read(kinds.duration(positive=False), seconds) == seconds


@given(st.integers(0, 2**50))
def test_a_size_reads_back_what_it_writes(size: int) -> None:
    assert written_and_read(kinds.size(0), size) == size
    assert written_and_read(kinds.size(0, written_in_bytes=True), size) == size


@given(st.floats(0, 1))
def test_a_fraction_reads_back_what_it_writes(share: float) -> None:
    assert written_and_read(kinds.fraction, share) == share


@given(st.floats(0, 100))
def test_a_percentage_reads_back_what_it_writes(percent: float) -> None:
    assert written_and_read(kinds.percent(optional=False), percent) == percent


def test_an_optional_percentage_is_none_when_unset() -> None:
    assert written_and_read(kinds.percent(optional=True), None) is None


@given(st.lists(st.ip_addresses().map(str), max_size=4))
def test_networks_read_back_what_they_write(addresses: list) -> None:
    problems = Problems("t.yaml")
    networks = kinds.networks.read(problems, from_python(problems, addresses, "key"), "key")
    assert isinstance(networks, tuple)
    assert written_and_read(kinds.networks, networks) == networks


@given(st.lists(st.text(min_size=1).filter(lambda text: text.strip() == text and "\x00" not in text), max_size=4))
def test_names_read_back_what_they_write(names: list) -> None:
    assert written_and_read(kinds.names("names"), tuple(names)) == tuple(names)


@pytest.mark.parametrize(
    "kind, value, message",
    [
        (kinds.size(1024), "10", "t.yaml: key: must be at least 1KiB, got \"10\""),
        (kinds.duration(positive=True), "0s", 't.yaml: key: must be greater than 0, got "0s"'),
        (kinds.integer(1, 9), 10, "t.yaml: key: must be between 1 and 9, got 10"),
        (kinds.choice(("a", "b"), "letter"), "c", "t.yaml: key: unknown letter 'c' (valid: a, b)"),
    ],
)
def test_a_kind_names_what_is_wrong(kind: Kind, value: Any, message: str) -> None:
    problems = Problems("t.yaml")
    try:
        kind.read(problems, from_python(problems, value, "key"), "key")
    except ValueError as error:
        problems.add(None, "key", str(error))
    with pytest.raises(ConfigError) as raised:
        problems.raise_if_any()
    assert raised.value.problems == [message]
