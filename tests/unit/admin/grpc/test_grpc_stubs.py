"""The shipped stubs are what ``tools/gen-grpc-stubs.sh`` makes of ``admin.proto`` today."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc_unit_support  # noqa: F401  (skips on PyPy)

ROOT = Path(__file__).resolve().parents[4]
PACKAGE = ROOT / "speedproxy" / "admin" / "grpc"


def test_the_stubs_are_up_to_date(tmp_path: Path) -> None:
    target = tmp_path / "speedproxy" / "admin" / "grpc"
    target.mkdir(parents=True)
    shutil.copy(PACKAGE / "admin.proto", target / "admin.proto")
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--grpc_python_out=.",
         "speedproxy/admin/grpc/admin.proto"],
        cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout
    for name in ("admin_pb2.py", "admin_pb2_grpc.py"):
        assert (target / name).read_text() == (PACKAGE / name).read_text(), (
            f"{name} is stale: run tools/gen-grpc-stubs.sh"
        )


def test_the_proto_ships_in_the_package() -> None:
    config = (ROOT / "setup.cfg").read_text()
    assert "speedproxy.admin.grpc = *.proto" in config
    from speedproxy.admin.grpc import admin_pb2

    assert admin_pb2.DESCRIPTOR.name == "speedproxy/admin/grpc/admin.proto"
    assert admin_pb2.DESCRIPTOR.package == "speedproxy.admin.v1"
