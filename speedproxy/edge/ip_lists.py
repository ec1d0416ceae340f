"""``allow`` / ``deny``: client addresses let in or refused, per route and for the host.

The address is the real client address (the one ``X-Forwarded-For``,
``X-Real-IP`` and ``ip_hash`` use: the peer, or what a trusted proxy said
it forwarded for).  Lists are CIDR networks, IPv4 and IPv6; an IPv4
address seen as an IPv4-mapped IPv6 one (``::ffff:10.1.2.3``) is matched as
IPv4.  The host's lists (``server.allow`` / ``server.deny``) are checked
first, then the route's: a request must pass both.  In each, ``deny`` wins
over ``allow``, and an empty ``allow`` lets every address in.  A refused
request gets a 403 JSON error (``ip_refused``) and no backend is asked.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from speedproxy.edge import is_internal
from speedproxy.edge.refusals import refuse
from speedproxy.filters.base import Filter
from speedproxy.filters.messages import FilterRequest, LocalResponse

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Verdicts remembered per filter (clients come back; parsing is the cost).
MEMO = 4096

#: Why an address is refused, or ``None`` when it may pass.
DENIED = "denied"
NOT_ALLOWED = "not_allowed"


def parse_address(text: str) -> Optional[Address]:
    """The address ``text`` names (IPv4-mapped IPv6 as IPv4), or ``None``."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AddressRules:
    """One pair of lists: ``deny`` wins over ``allow``; an empty ``allow`` allows all."""

    __slots__ = ("allow", "deny")

    def __init__(self, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        self.allow: Tuple[Network, ...] = tuple(ipaddress.ip_network(net, strict=False) for net in allow)
        self.deny: Tuple[Network, ...] = tuple(ipaddress.ip_network(net, strict=False) for net in deny)

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def verdict(self, address: Address) -> Optional[str]:
        """``None`` (may pass), :data:`DENIED` or :data:`NOT_ALLOWED`."""
        for network in self.deny:
            if address in network:  # another version's network never contains it
                return DENIED
        if self.allow:
            for network in self.allow:
                if address in network:
                    return None
            return NOT_ALLOWED
        return None


class IpListFilter(Filter):
    """Refuses requests from addresses the host's or the route's lists keep out."""

    def __init__(self, core: Any, rules: Sequence[AddressRules]) -> None:
        self.core = core
        self.rules = tuple(rule for rule in rules if rule)
        self._memo: Dict[str, Optional[str]] = {}

    def verdict(self, client_ip: str) -> Optional[str]:
        """Why ``client_ip`` is refused (remembered), or ``None``."""
        memo = self._memo
        if client_ip in memo:
            return memo[client_ip]
        address = parse_address(client_ip)
        found: Optional[str] = NOT_ALLOWED if address is None else None
        if address is not None:
            for rules in self.rules:
                found = rules.verdict(address)
                if found is not None:
                    break
        if len(memo) >= MEMO:
            memo.clear()
        memo[client_ip] = found
        return found

    def request(self, request: FilterRequest) -> Optional[LocalResponse]:
        found = self.verdict(request.client_ip)
        if found is None or is_internal(request):
            return None
        why = "is denied" if found == DENIED else "is not in the allow list"
        return refuse(
            self.core, request, "ip", 403, "ip_refused", f"the client address {request.client_ip} {why}"
        )


def build(core: Any, config: Any, route: Any) -> Optional[IpListFilter]:
    """The filter of ``route`` (``None`` when neither it nor ``server`` has a list)."""
    rules = [AddressRules(config.server.allow, config.server.deny), AddressRules(route.allow, route.deny)]
    if not any(rules):
        return None
    return IpListFilter(core, rules)
