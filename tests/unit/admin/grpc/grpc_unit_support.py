"""Shared by the gRPC service's unit tests: the admin site tests' fake control, a reactor stand-in.

grpcio has no PyPy build and its releases need Python 3.10 (the
``speedproxy[grpc]`` extra installs nothing elsewhere), so there these
modules are skipped as a whole; anywhere else a missing grpcio is an
error, not a skip.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

if platform.python_implementation() == "PyPy" or sys.version_info < (3, 10):  # pragma: no cover
    pytest.skip("the grpc extra installs nothing here (PyPy, or Python < 3.10)", allow_module_level=True)

# The admin site's unit tests own the fake master (FakeControl).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_admin_site import CONFIG, FakeControl  # noqa: E402

__all__ = ["CONFIG", "FakeControl", "ImmediateReactor"]


class ImmediateReactor:
    """``callFromThread`` runs the function at once, in the calling thread.

    Enough for the synchronous :class:`FakeControl`, whose Deferreds have
    fired when returned; calls are made one at a time by the tests.
    """

    def __init__(self) -> None:
        self.calls = 0

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        self.calls += 1
        function(*args)
