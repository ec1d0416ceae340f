"""External programs the tests run (curl, ffmpeg, h2load, redis-server...), installed from Debian packages when missing.

:func:`ensure_program` answers the program's path, or raises
:class:`ProgramMissing` naming the package when it is missing and cannot be
installed (not root, no ``apt-get``, no package mirror): a missing tool is a
test failure with a clear message, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Callable, Optional

#: Bound of one apt-get run, in seconds.
APT_TIMEOUT = 900.0


class ProgramMissing(RuntimeError):
    """A program the tests need is missing and could not be installed."""


def ensure_program(
    binary: str,
    package: str,
    needed_for: str,
    usable: Optional[Callable[[str], bool]] = None,
) -> str:
    """The path of ``binary``, installing Debian's ``package`` if it is missing.

    ``usable(path)`` may refuse a binary that is there but lacks a feature
    (curl without brotli, say): the package is then installed or upgraded.

    :raises ProgramMissing: naming the package and what was tried.
    """

    def found() -> Optional[str]:
        path = shutil.which(binary)
        if path is not None and (usable is None or usable(path)):
            return path
        return None

    path = found()
    if path is not None:
        return path
    tried = "not root or no apt-get"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        for command in (install, ["apt-get", "update", "-q"], install):
            try:
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT)
            except subprocess.TimeoutExpired:
                tried = f"{' '.join(command)} timed out"
                break
            tried = f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-300:]}"
            path = found()
            if path is not None:
                return path
    raise ProgramMissing(
        f"{needed_for} need(s) {binary} (Debian package {package!r}), and it could not be installed ({tried})"
    )
