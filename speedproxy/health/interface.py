"""The health checker seam."""

from __future__ import annotations

from zope.interface import Interface


class IHealthChecker(Interface):
    """Probes one backend once."""

    def check(backend):  # type: ignore[no-untyped-def]
        """Probe ``backend`` (a :class:`~speedproxy.config.model.BackendConfig`).

        :return: a Deferred firing with ``True`` (healthy) or ``False``; it
            must fire (not hang) within the check's ``timeout``.
        """
