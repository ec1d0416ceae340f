"""The balancer seam: how a backend is chosen for one request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from zope.interface import Interface

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.upstreams import Backend


class IBalancer(Interface):
    """Chooses one backend of an upstream group for each request.

    A balancer is created per (route, protocol) in each worker.  It is told the
    group's full membership with :meth:`update` whenever that changes (config
    reload, admin API), and asked to :meth:`pick` among the backends that can
    take a request right now.
    """

    def update(backends: Sequence["Backend"]) -> None:
        """Learn the group's full, ordered membership (available or not).

        Balancers that keep state derived from membership (a hash ring,
        smooth-weight counters) rebuild it here.  Called once before the first
        ``pick`` and again after every membership or weight change.
        """

    def pick(candidates: Sequence["Backend"], client_key: str) -> Optional["Backend"]:
        """Return one of ``candidates``, or ``None`` to refuse the request.

        ``candidates`` is a non-empty subsequence of the membership given to
        :meth:`update`, in the same order, holding only backends that are
        active, healthy, below ``max_conn`` and of positive weight.
        ``client_key`` is the real client IP as a string (used by ``ip_hash``).
        """
