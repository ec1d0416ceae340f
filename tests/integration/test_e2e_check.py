"""``twistd speedproxy --config F --check``: validate, report, exit 0/1, start nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

from speedproxy.testing import check_config, free_port


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "speedproxy.yaml"
    path.write_text(text)
    return path


def _assert_nothing_listens(port: int) -> None:
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def _valid(port: int) -> str:
    return yaml.safe_dump(
        {
            "server": {"host": "127.0.0.1", "port": port, "idle_timeout": "5s", "max_header_size": "16KiB"},
            "admin": {"listen": f"127.0.0.1:{free_port()}"},
            "backends": {"default": [{"id": "b1", "host": "127.0.0.1", "port": free_port()}]},
            "routing": {"default": {"path": "/", "upstream": "default", "load_balancer": "round_robin"}},
        },
        sort_keys=False,
    )


def test_valid_file_exits_0(tmp_path: Path) -> None:
    port = free_port()
    path = _write(tmp_path, _valid(port))
    result = check_config(path)
    assert result.returncode == 0, result.stdout
    assert "successful" in result.stdout
    assert str(path) in result.stdout
    assert "serving on" not in result.stdout
    _assert_nothing_listens(port)


def test_unknown_key_exits_1_naming_file_line_and_key(tmp_path: Path) -> None:
    port = free_port()
    text = _valid(port).replace("  idle_timeout: 5s\n", "  idle_timeout: 5s\n  idle_timout_typo: 5s\n")
    path = _write(tmp_path, text)
    line = text.splitlines().index("  idle_timout_typo: 5s") + 1
    result = check_config(path)
    assert result.returncode == 1, result.stdout
    assert f"{path}:{line}: server.idle_timout_typo" in result.stdout
    assert "unknown key" in result.stdout
    assert "failed" in result.stdout
    assert "serving on" not in result.stdout
    _assert_nothing_listens(port)


def test_wrong_type_exits_1_naming_file_line_and_key(tmp_path: Path) -> None:
    port = free_port()
    text = _valid(port).replace("  max_header_size: 16KiB\n", "  max_header_size: 16KiB\n  read_timeout: [1, 2]\n")
    path = _write(tmp_path, text)
    line = text.splitlines().index("  read_timeout: [1, 2]") + 1
    result = check_config(path)
    assert result.returncode == 1, result.stdout
    assert f"{path}:{line}: server.read_timeout" in result.stdout
    assert "serving on" not in result.stdout
    _assert_nothing_listens(port)


def test_wrong_type_in_list_names_the_index(tmp_path: Path) -> None:
    port = free_port()
    text = _valid(port)
    data = yaml.safe_load(text)
    data["backends"]["default"].append({"id": "b2", "host": "127.0.0.1", "port": "eighty"})
    text = yaml.safe_dump(data, sort_keys=False)
    path = _write(tmp_path, text)
    line = text.splitlines().index("    port: eighty") + 1
    result = check_config(path)
    assert result.returncode == 1, result.stdout
    assert f"{path}:{line}: backends.default[1].port" in result.stdout
    _assert_nothing_listens(port)
