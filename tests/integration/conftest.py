"""Fixtures for end-to-end tests: real ``twistd speedproxy`` processes and backends.

``backend`` / ``make_backend`` / ``proxy_factory`` are per test; the
``module_*`` variants live for one test module, so that tests that do not
interfere share one proxy process (starting one costs ~0.3 s).  Everything
started is stopped at teardown, whatever the test did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, List, Mapping, Optional, Union

import pytest

from speedproxy.testing import (
    Behaviour,
    HTTPBackend,
    ProxyProcess,
    RawBackend,
    RawHandler,
    deep_merge,
    proxy_config,
)

BackendLike = Union[HTTPBackend, RawBackend, tuple]


class Stack:
    """Starts backends and proxies and stops them all, proxies first."""

    def __init__(self, directory_for: Callable[[str], Path]) -> None:
        self._directory_for = directory_for
        self.proxies: List[ProxyProcess] = []
        self.backends: List[Union[HTTPBackend, RawBackend]] = []

    def backend(self, behaviour: Optional[Behaviour] = None, name: str = "backend") -> HTTPBackend:
        """Start an :class:`HTTPBackend` (default behaviour: echo)."""
        server = HTTPBackend(behaviour, name=name).start()
        self.backends.append(server)
        return server

    def raw_backend(self, handler: RawHandler, name: str = "raw") -> RawBackend:
        """Start a :class:`RawBackend` around ``handler(sock, stopping)``."""
        server = RawBackend(handler, name=name).start()
        self.backends.append(server)
        return server

    def proxy(
        self,
        *backends: BackendLike,
        config: Optional[Mapping[str, Any]] = None,
        **server: Any,
    ) -> ProxyProcess:
        """Start a proxy in front of ``backends`` (one ``default`` route).

        ``config`` is merged over the generated one; keyword arguments are
        ``server.*`` settings.
        """
        generated = proxy_config(*backends, **server) if backends else ({"server": server} if server else {})
        merged = deep_merge(generated, config or {})
        directory = self._directory_for(f"proxy{len(self.proxies)}")
        process = ProxyProcess(merged, directory=directory)
        self.proxies.append(process)
        process.start()
        return process

    def close(self) -> None:
        for process in self.proxies:
            process.stop(timeout=5.0)
        for server in self.backends:
            server.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Per-test :class:`Stack`."""
    made = Stack(lambda name: tmp_path / name)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A :class:`Stack` shared by the tests of one module."""
    made = Stack(lambda name: tmp_path_factory.mktemp(name))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def backend(stack: Stack) -> HTTPBackend:
    """A fresh echo backend for one test."""
    return stack.backend(name="backend")


@pytest.fixture
def make_backend(stack: Stack) -> Callable[..., HTTPBackend]:
    """Factory of per-test backends: ``make_backend(behaviour, name=...)``."""
    return stack.backend


@pytest.fixture
def proxy_factory(stack: Stack) -> Callable[..., ProxyProcess]:
    """Factory of per-test proxies: ``proxy_factory(*backends, config=..., **server)``."""
    return stack.proxy


@pytest.fixture(scope="module")
def module_backend(module_stack: Stack) -> HTTPBackend:
    """An echo backend shared by one module."""
    return module_stack.backend(name="module-backend")


@pytest.fixture(scope="module")
def module_proxy(module_stack: Stack, module_backend: HTTPBackend) -> ProxyProcess:
    """A proxy with default test settings in front of ``module_backend``."""
    return module_stack.proxy(module_backend)


@pytest.fixture(scope="session")
def curl() -> str:
    """Path of the curl binary (Debian's ``curl``, installed if missing)."""
    from debian_support import ensure_program

    return ensure_program("curl", "curl", "tests that use curl")
