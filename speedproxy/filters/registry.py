"""Finding filter kinds by name: speedproxy's own and other packages' plugins.

A package adds filters with a module in its ``twisted/plugins/`` directory
holding objects that provide :class:`~speedproxy.filters.interface.IFilterKind`
(Twisted's plugin system, as ``twistd`` finds its commands).
"""

from __future__ import annotations

from typing import Dict, Optional

from speedproxy.filters.interface import IFilterKind

_found: Optional[Dict[str, IFilterKind]] = None


def _discover() -> Dict[str, IFilterKind]:
    from twisted.plugin import getPlugins

    import twisted.plugins

    kinds: Dict[str, IFilterKind] = {}
    for kind in getPlugins(IFilterKind, twisted.plugins):
        kinds.setdefault(str(kind.name), kind)
    return kinds


def filter_kinds(refresh: bool = False) -> Dict[str, IFilterKind]:
    """Every filter kind installed, by name (looked up once per process)."""
    global _found
    if _found is None or refresh:
        _found = _discover()
    return _found


def find_filter_kind(name: str) -> IFilterKind:
    """The filter kind called ``name``.

    :raises KeyError: with a message listing the known names.
    """
    kinds = filter_kinds()
    kind = kinds.get(name)
    if kind is None:
        kinds = filter_kinds(refresh=True)  # installed since the last look
        kind = kinds.get(name)
    if kind is None:
        known = ", ".join(sorted(kinds)) or "none installed"
        raise KeyError(f"unknown filter {name!r} (known: {known})")
    return kind
