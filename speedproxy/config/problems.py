"""Config problems: collected as ``FILE:LINE: key.path: message`` and raised together as :class:`ConfigError`.

Every reader of the config reports what is wrong with a value through one
:class:`Problems` collector, so ``--check`` (and a refused admin API change)
lists every problem of a file in one pass, in line order.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Iterable, List, Optional, Sequence, Tuple

__all__ = ["ConfigError", "Problems", "Reported", "join", "unknown_key"]


class ConfigError(Exception):
    """A config is invalid; :attr:`problems` lists every reason, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: List[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


class Reported(Exception):
    """A value is invalid and its problems have already been recorded."""


class Problems:
    """Collect problems as ``FILE[:LINE]: PATH: MESSAGE`` strings."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self._items: List[Tuple[int, str]] = []

    def add(self, line: Optional[int], path: str, message: str) -> None:
        """Record one problem at *line* (``None`` when unknown) and key *path*."""
        where = self.filename if line is None else f"{self.filename}:{line}"
        self._items.append((line or 0, f"{where}: {path}: {message}" if path else f"{where}: {message}"))

    def raise_if_any(self) -> None:
        """Raise :class:`ConfigError` with the problems in line order, if there are any."""
        if self._items:
            raise ConfigError([text for _, text in sorted(self._items, key=lambda item: item[0])])


_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def join(path: str, key: str) -> str:
    """The dotted key path of *key* under *path* (``routing.api``, ``routing["/x"]``)."""
    if not _SIMPLE_KEY.fullmatch(key):
        return f"{path}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}.{key}" if path else key


def unknown_key(key: str, valid: Iterable[str]) -> str:
    """The message for an unknown *key*, with the closest valid one if any."""
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f"unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else "")
