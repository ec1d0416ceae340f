"""The ``grpc`` section: the master's gRPC management service (the ``speedproxy[grpc]`` extra)."""

from __future__ import annotations

from speedproxy.config.kinds import boolean, integer, string
from speedproxy.config.located import Val
from speedproxy.config.model import GrpcConfig
from speedproxy.config.problems import Problems
from speedproxy.config.schema import Kind, Section

__all__ = ["GRPC"]


def _grpc_enabled(problems: Problems, val: Val, path: str) -> bool:
    """``grpc.enabled``; true needs grpcio (the ``speedproxy[grpc]`` extra)."""
    enabled = boolean(problems, val, path)
    if enabled:
        from speedproxy.admin.grpc import grpc_missing

        missing = grpc_missing()
        if missing is not None:
            raise ValueError(missing)
    return enabled


GRPC = Section(
    GrpcConfig,
    {
        "enabled": Kind(_grpc_enabled),
        "host": string(non_empty=True),
        "port": integer(1, 65535),
    },
)
