"""speedproxy.tap.makeService: every listener is bound before any service starts."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator, Tuple

import pytest
import yaml

from speedproxy.master.listeners import ListenError
from speedproxy.master.service import MasterService
from speedproxy.tap import AdoptedPort, Options, makeService
from speedproxy.testing import free_port
from speedproxy.worker import ProxyWorkerService


@pytest.fixture
def ports() -> Tuple[int, int, int]:
    return free_port(), free_port(), free_port()


def _options(tmp_path: Path, proxy: int, admin: int, workers: int = 1, demo: int = 0) -> Options:
    config = {
        "server": {"host": "127.0.0.1", "port": proxy, "workers": workers},
        "admin": {"listen": f"127.0.0.1:{admin}"},
    }
    args = []
    if demo:
        config["backends"] = {"default": [{"id": "demo", "host": "127.0.0.1", "port": demo}]}
        config["routing"] = {"default": {"path": "/", "upstream": "default"}}
        args.append("--demo-origin")
    path = tmp_path / "speedproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    options = Options()
    options.parseOptions(["--config", str(path), *args])
    return options


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def holder() -> Iterator[socket.socket]:
    sock = socket.socket()
    yield sock
    sock.close()


@pytest.mark.parametrize("workers", [1, 0])
def test_make_service_binds_every_listener(tmp_path: Path, ports, workers: int) -> None:
    proxy, admin, demo = ports
    root = makeService(_options(tmp_path, proxy, admin, workers, demo), reactor=object())
    services = list(root)
    try:
        assert all(_listening(port) for port in ports)
        assert isinstance(services[0], AdoptedPort)
        assert isinstance(services[1], ProxyWorkerService if workers == 0 else MasterService)
    finally:
        services[0].listener.close()
        if workers == 0:
            services[1]._listener.close()
            services[1]._admin_listener.close()
        else:
            services[1].listener.close()
            services[1]._admin_listener.close()
    assert not any(_listening(port) for port in ports)


@pytest.mark.parametrize("taken", ["proxy", "admin", "demo"])
def test_one_address_in_use_binds_nothing(tmp_path: Path, ports, holder, taken: str) -> None:
    proxy, admin, demo = ports
    held = {"proxy": proxy, "admin": admin, "demo": demo}[taken]
    holder.bind(("127.0.0.1", held))
    holder.listen(1)
    options = _options(tmp_path, proxy, admin, demo=demo)
    with pytest.raises(ListenError) as info:
        makeService(options, reactor=object())
    key = {"proxy": "server.host/server.port", "admin": "admin.listen", "demo": "--demo-origin"}[taken]
    assert f"127.0.0.1:{held} ({key})" in str(info.value)
    holder.close()
    assert not any(_listening(port) for port in ports)


def test_check_exits_before_anything_is_bound(tmp_path: Path, ports, holder) -> None:
    proxy, admin, _ = ports
    holder.bind(("127.0.0.1", admin))
    holder.listen(1)
    path = tmp_path / "speedproxy.yaml"
    path.write_text(yaml.safe_dump({"server": {"host": "127.0.0.1", "port": proxy}, "admin": {"listen": f"127.0.0.1:{admin}"}}))
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--config", str(path), "--check"])
    assert info.value.code == 0
    assert not _listening(proxy)
