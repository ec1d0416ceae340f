"""Tests for :mod:`speedproxy.config.substitutions`."""

from __future__ import annotations

import pytest

from speedproxy.config.substitutions import SubstitutionError, is_reference, resolve


def test_plain_text_is_itself() -> None:
    assert resolve("no references here") == "no references here"
    assert not is_reference("plain") and is_reference("${env:X}") and is_reference("${file:/k}")


def test_file_and_env(tmp_path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"secret value\r\n")
    assert resolve(f"${{file:{path}}}") == "secret value"
    assert resolve("${env:KEY}", {"KEY": "v "}) == "v"


@pytest.mark.parametrize(
    "text, message",
    [
        ("${env:MISSING}", "is not set"),
        ("${env:not a name}", "not an environment variable name"),
        ("${file:k}", "must be absolute"),
        ("${vault:x}", "not a substitution"),
        ("pre${env:KEY}", "not a substitution"),
        ("${env:EMPTY}", "is empty"),
    ],
)
def test_what_cannot_be_resolved_says_why(text: str, message: str) -> None:
    with pytest.raises(SubstitutionError, match=message):
        resolve(text, {"KEY": "v", "EMPTY": "  "})


def test_an_unreadable_or_huge_file(tmp_path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(SubstitutionError, match="not a secret"):
        resolve(f"${{file:{big}}}")
    with pytest.raises(SubstitutionError, match="cannot read"):
        resolve(f"${{file:{tmp_path}}}")  # a directory


@pytest.mark.parametrize("text", ["hunter2-${-literal-secret", "${vault:hunter2}x", "${env:hunter2 secret}"])
def test_an_error_never_quotes_a_literal_secret(text: str) -> None:
    with pytest.raises(SubstitutionError) as raised:
        resolve(text, {})
    assert "hunter2" not in str(raised.value)
