"""Helpers for the gRPC management service's end-to-end tests: clients, reflection, a proxy.

grpcurl is not packaged by Debian 12, so what it does (list the services
through server reflection, resolve a method's messages from the reflected
descriptors, call it with a JSON body) is done here with grpcio's own
reflection client; the typed calls use the stubs shipped in the package.
"""

from __future__ import annotations

import json
import platform
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

if platform.python_implementation() == "PyPy" or sys.version_info < (3, 10):  # pragma: no cover
    # The grpc extra installs nothing there; --check says so (tested in test_e2e_grpc_admin on CPython).
    pytest.skip("the grpc extra installs nothing here (PyPy, or Python < 3.10)", allow_module_level=True)

import grpc  # noqa: E402
from google.protobuf import descriptor_pool, json_format, message_factory  # noqa: E402
from google.protobuf.struct_pb2 import Struct  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase  # noqa: E402

from speedproxy.admin.grpc import admin_pb2, admin_pb2_grpc  # noqa: E402
from speedproxy.testing import ProxyProcess, free_port  # noqa: E402

KEY = "s3cret-key"
TIMEOUT = 15.0
SERVICE = "speedproxy.admin.v1.Admin"


def grpc_config(port: int, key: Optional[str] = KEY) -> Dict[str, Any]:
    config: Dict[str, Any] = {"grpc": {"enabled": True, "host": "127.0.0.1", "port": port}}
    if key is not None:
        config["admin"] = {"api_key": key}
    return config


def start_grpc_proxy(stack: Any, *backends: Any, workers: int = 2, key: Optional[str] = KEY) -> Tuple[ProxyProcess, int]:
    """A proxy with ``workers`` workers and the gRPC service on a free port."""
    port = free_port()
    proxy = stack.proxy(*backends, config=grpc_config(port, key), workers=workers)
    return proxy, port


def as_dict(message: Any) -> Dict[str, Any]:
    """A Struct answer as JSON data (numbers are floats, as in JSON)."""
    return json_format.MessageToDict(message)


def struct(data: Dict[str, Any]) -> Struct:
    value = Struct()
    value.update(data)
    return value


class AdminGrpc:
    """Typed calls through the generated stub, with the API key as metadata."""

    def __init__(self, port: int, key: Optional[str] = KEY) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = admin_pb2_grpc.AdminStub(self.channel)
        self.key = key

    def metadata(self, key: Any = "default") -> Sequence[Tuple[str, str]]:
        use = self.key if key == "default" else key
        return [("x-api-key", use)] if use is not None else []

    def call(self, name: str, request: Any = None, key: Any = "default", timeout: float = TIMEOUT) -> Dict[str, Any]:
        if request is None:
            request = getattr(admin_pb2, name + "Request")()
        answer = getattr(self.stub, name)(request, metadata=self.metadata(key), timeout=timeout)
        return as_dict(answer)

    def refused(self, name: str, request: Any, key: Any = "default") -> Tuple[grpc.StatusCode, str, Dict[str, Any]]:
        """The status, message and ``x-error-body`` of a call that must fail."""
        try:
            getattr(self.stub, name)(request, metadata=self.metadata(key), timeout=TIMEOUT)
        except grpc.RpcError as error:
            trailer = dict(error.trailing_metadata() or ())
            body = json.loads(trailer["x-error-body"]) if "x-error-body" in trailer else {}
            return error.code(), error.details(), body
        raise AssertionError(f"{name} did not fail")

    def close(self) -> None:
        self.channel.close()


def health_status(port: int, service: str = "") -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def serving(port: int) -> bool:
    """Is the health service answering SERVING?  (``False`` while it is not up yet.)

    In single-process mode the readiness line comes before the gRPC
    service starts; a client may even reach the listener ``twistd
    speedproxy`` bound first, just before it is handed to grpcio.
    """
    try:
        return health_status(port) == "SERVING"
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return False
        raise


class Reflected:
    """What grpcurl does: services and methods from server reflection, calls from JSON."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.database = ProtoReflectionDescriptorDatabase(self.channel)
        self.pool = descriptor_pool.DescriptorPool(self.database)

    def services(self) -> List[str]:
        return sorted(self.database.get_services())

    def methods(self, service: str) -> Dict[str, Any]:
        return {method.name: method for method in self.pool.FindServiceByName(service).methods}

    def call(self, service: str, method: str, body: Dict[str, Any], metadata: Sequence[Tuple[str, str]] = ()) -> List[Dict[str, Any]]:
        """Call ``method`` with a JSON body; every answer (one, or a stream's) as JSON."""
        descriptor = self.methods(service)[method]
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        response_class = message_factory.GetMessageClass(descriptor.output_type)
        request = json_format.ParseDict(body, request_class())
        path = f"/{service}/{method}"
        if descriptor.server_streaming:
            call = self.channel.unary_stream(
                path, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString
            )
            return [json_format.MessageToDict(item) for item in call(request, metadata=metadata, timeout=TIMEOUT)]
        call = self.channel.unary_unary(
            path, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString
        )
        return [json_format.MessageToDict(call(request, metadata=metadata, timeout=TIMEOUT))]

    def close(self) -> None:
        self.channel.close()
