"""Tests for :func:`speedproxy.admin.grpc.grpc_missing`."""

from __future__ import annotations

import importlib
import platform
import subprocess
import sys
from typing import Any

import grpc_unit_support  # noqa: F401  (skips on PyPy)

from speedproxy.admin import grpc as package


def test_nothing_is_missing_here() -> None:
    assert package.grpc_missing() is None


def test_a_module_that_cannot_be_imported_is_named(monkeypatch: Any) -> None:
    real = importlib.import_module

    def refuse(name: str, *args: Any) -> Any:
        if name == "grpc_reflection.v1alpha.reflection":
            raise ImportError("No module named 'grpc_reflection'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", refuse)
    message = package.grpc_missing()
    assert message is not None
    assert message.startswith("the gRPC management service needs grpcio-reflection, which cannot be imported here")
    assert message.endswith("pip install 'speedproxy[grpc]'")


def test_on_pypy_the_message_says_what_to_do(monkeypatch: Any) -> None:
    monkeypatch.setattr(platform, "python_implementation", lambda: "PyPy")
    real = importlib.import_module

    def no_grpc(name: str, *args: Any) -> Any:
        if name == "grpc":
            raise ImportError("No module named 'grpc'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_grpc)
    message = package.grpc_missing()
    assert message is not None
    assert "needs grpcio," in message
    assert "grpcio has no PyPy build, so on PyPy set grpc.enabled: false" in message


def test_loading_speedproxy_does_not_import_grpcio() -> None:
    """The plugin, the loader and a config without gRPC never pay for grpcio."""
    code = (
        "import sys; import speedproxy.tap, speedproxy.admin.grpc, speedproxy.admin.site; "
        "from speedproxy.config import parse_config; parse_config('grpc: {enabled: false}'); "
        "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == "[]"
