"""The gRPC management service (``grpc: {enabled: true, host, port}``).

The same calls as the JSON admin API (:mod:`speedproxy.admin.facade`),
served by the master over gRPC as ``speedproxy.admin.v1.Admin`` (see
``admin.proto`` beside this file), with ``grpc.health.v1.Health`` and
server reflection.  It needs the ``speedproxy[grpc]`` extra (grpcio,
grpcio-health-checking, grpcio-reflection), which has no PyPy build: this
package imports grpcio only when the service starts, and
:func:`grpc_missing` lets ``--check`` say why it cannot.
"""

from __future__ import annotations

import platform
from typing import Optional

#: The modules the service needs, and the distributions that bring them.
REQUIRED = (
    ("grpc", "grpcio"),
    ("grpc_health.v1.health", "grpcio-health-checking"),
    ("grpc_reflection.v1alpha.reflection", "grpcio-reflection"),
)


def grpc_missing() -> Optional[str]:
    """Why the gRPC service cannot run in this interpreter, or ``None``.

    The modules are imported (not just looked up), so a broken install is
    reported too.
    """
    import importlib

    for module, distribution in REQUIRED:
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError, or a broken native module
            message = (
                f"the gRPC management service needs {distribution}, which cannot be imported here "
                f"({type(error).__name__}: {error}): pip install 'speedproxy[grpc]'"
            )
            if platform.python_implementation() == "PyPy":
                message += (
                    "; grpcio has no PyPy build, so on PyPy set grpc.enabled: false and use the JSON "
                    "admin API (admin.listen), which has the same calls"
                )
            return message
    return None
