"""Programs the end-to-end tests run, installed from Debian packages when missing.

A test that needs a program calls :func:`ensure_program`: its path, or a
test failure naming the Debian package when it is missing and cannot be
installed (see :mod:`speedproxy.testing.programs`); never a silent skip.
"""

from __future__ import annotations

from typing import Callable, Optional

import pytest

from speedproxy.testing.programs import ProgramMissing
from speedproxy.testing.programs import ensure_program as _ensure_program


def ensure_program(
    binary: str, package: str, needed_for: str, usable: Optional[Callable[[str], bool]] = None
) -> str:
    """The path of ``binary`` (Debian's ``package``, installed if missing), or fail the test."""
    try:
        return _ensure_program(binary, package, needed_for, usable)
    except ProgramMissing as missing:
        pytest.fail(str(missing), pytrace=False)
