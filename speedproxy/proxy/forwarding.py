"""What the proxy adds, removes and trusts in forwarded headers."""

from __future__ import annotations

import ipaddress
from http import HTTPStatus
import re
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from speedproxy.proxy.http1 import Headers

#: Hop-by-hop fields (RFC 9110 7.6.1) plus the non-standard ones peers strip.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Fields the proxy sets itself on the way to a backend.
_REPLACED_UPSTREAM = HOP_BY_HOP | {
    b"content-length",
    b"expect",
    b"x-real-ip",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
    b"traceparent",
}
#: The same, and ``tracestate`` (dropped with an invalid or absent ``traceparent``).
_REPLACED_UPSTREAM_NO_STATE = _REPLACED_UPSTREAM | {b"tracestate"}
#: Fields a ``Connection`` token cannot remove.
_KEPT = frozenset({b"host"})

#: Fields the proxy sets itself on the way to a client.
_REPLACED_DOWNSTREAM = HOP_BY_HOP | {b"content-length", b"x-request-id", b"x-speedproxy"}

_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}\Z")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def sane_request_id(value: Optional[bytes]) -> Optional[bytes]:
    """Return a client's ``X-Request-Id`` if it is safe to keep, else ``None``."""
    if value is not None and _SANE_REQUEST_ID.match(value) is not None:
        return value
    return None


class ClientAddressResolver:
    """Finds the real client address, trusting headers only from trusted peers.

    ``X-Forwarded-For`` (when it is the configured header) is walked right to
    left, skipping only trusted hops, so a client cannot spoof its address by
    prepending entries.
    """

    def __init__(self, trusted_proxies: Sequence[str], real_ip_header: str) -> None:
        self._networks: Tuple[Network, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in trusted_proxies
        )
        self.header = real_ip_header.lower().encode("ascii")
        self._is_xff = self.header == b"x-forwarded-for"

    def is_trusted(self, address: str) -> bool:
        """Is ``address`` one of the trusted proxies?"""
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def resolve(self, peer: str, peer_trusted: bool, headers: Headers) -> str:
        """Return the client address for a request from ``peer``."""
        if not peer_trusted:
            return peer
        wanted = self.header
        values: List[bytes] = [value for name, value in headers if name.lower() == wanted]
        if not values:
            return peer
        if self._is_xff:
            hops = [hop.strip() for value in values for hop in value.split(b",")]
            for hop in reversed(hops):
                text = hop.decode("latin-1")
                if not _valid_ip(text):
                    return peer
                if not self.is_trusted(text):
                    return text
            return hops[0].decode("latin-1") if hops else peer
        text = values[-1].strip().decode("latin-1")
        return text if _valid_ip(text) else peer


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def upstream_request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    connection_tokens: Iterable[bytes],
    *,
    peer: str,
    client_ip: str,
    scheme: bytes,
    host: bytes,
    request_id: bytes,
    framing: bytes,
    upgrade: Optional[bytes] = None,
    lowered: Optional[List[bytes]] = None,
    default_host: bytes = b"",
    trace: Optional[Tuple[bytes, bytes, bytes]] = None,
    drop_tracestate: bool = False,
) -> bytes:
    """Serialise the request head sent to a backend.

    ``host`` is the request's host (its ``Host`` field is forwarded as is,
    whatever ``Connection`` lists); an HTTP/1.0 request without one is given
    ``Host: default_host`` (the backend's address, as nginx's
    ``$proxy_host``), since an HTTP/1.1 request must carry Host.

    ``upgrade`` (the client's ``Upgrade`` value) keeps a protocol upgrade
    going; it is otherwise hop-by-hop and removed.

    ``framing`` is the already-formatted body framing field line(s), for
    example ``b"Content-Length: 12\\r\\n"`` or ``b""``.

    ``trace`` (trace id, this hop's span id, flags: hex digits, see
    :mod:`speedproxy.tracing.context`) is sent as ``traceparent`` instead of
    the client's; ``drop_tracestate`` drops the client's ``tracestate`` too
    (its ``traceparent`` was invalid or absent).
    """
    drop = _REPLACED_UPSTREAM_NO_STATE if drop_tracestate else _REPLACED_UPSTREAM
    if connection_tokens:
        # Connection cannot make the proxy drop Host: the backend must see
        # the host the request was routed on.
        drop = drop | (frozenset(connection_tokens) - _KEPT)
    out = [method, b" ", target, b" HTTP/1.1\r\n"]
    if not host:
        out += (b"Host: ", default_host, b"\r\n")
    forwarded_for = None
    via = None
    if lowered is None:
        lowered = [name.lower() for name, _ in headers]
    for (name, value), lname in zip(headers, lowered):
        if lname in drop:
            continue
        if lname == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            continue
        if lname == b"via":
            via = value if via is None else via + b", " + value
            continue
        out += (name, b": ", value, b"\r\n")
    peer_bytes = peer.encode("ascii")
    out += (
        b"X-Forwarded-For: ",
        peer_bytes if forwarded_for is None else forwarded_for + b", " + peer_bytes,
        b"\r\nX-Real-IP: ",
        client_ip.encode("ascii"),
        b"\r\nX-Forwarded-Proto: ",
        scheme,
        b"\r\nX-Forwarded-Host: " if host else b"",
        host,
        b"\r\nVia: ",
        b"1.1 speedproxy" if via is None else via + b", 1.1 speedproxy",
        b"\r\nX-Request-Id: ",
        request_id,
        b"\r\n",
    )
    if trace is not None:
        out += (b"traceparent: 00-", trace[0], b"-", trace[1], b"-", trace[2], b"\r\n", framing)
    else:
        out.append(framing)
    if upgrade is not None:
        out += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def client_response_head(
    version: bytes,
    status: int,
    reason: bytes,
    headers: Headers,
    connection_tokens: Iterable[bytes],
    *,
    request_id: bytes,
    server_tag: bytes,
    framing: bytes,
    keep_alive: bool,
    lowered: Optional[List[bytes]] = None,
) -> bytes:
    """Serialise the response head sent to the client.

    ``server_tag`` is the preformatted ``X-Speedproxy``/``Via`` block.
    """
    drop = _REPLACED_DOWNSTREAM
    if connection_tokens:
        drop = drop | frozenset(connection_tokens)
    out = [b"%s %d %s\r\n" % (version, status, reason)]
    if lowered is None:
        lowered = [name.lower() for name, _ in headers]
    for (name, value), lname in zip(headers, lowered):
        if lname in drop:
            continue
        out += (name, b": ", value, b"\r\n")
    out += (
        server_tag,
        b"X-Request-Id: ",
        request_id,
        b"\r\n",
        framing,
        b"\r\n" if keep_alive else b"Connection: close\r\n\r\n",
    )
    return b"".join(out)


#: Status lines with the standard reason phrase, built once.
_STATUS_LINES = {
    int(item): b"HTTP/1.1 %d %s\r\n" % (int(item), item.phrase.encode("latin-1")) for item in HTTPStatus
}


def local_response(
    status: int,
    reason: Optional[str],
    headers: Headers,
    body: bytes,
    request_id: bytes,
    server_tag: bytes,
    keep_alive: bool,
    head_only: bool,
    block: bytes = b"",
    length: Optional[int] = None,
) -> bytes:
    """Serialise a whole response given by a filter (a cache hit, a 429...).

    ``headers`` are ``(name, value)`` bytes without framing fields, and
    ``block`` header lines already serialised; the body is sent with
    ``Content-Length`` (``length`` when the body follows separately; left
    out for ``HEAD``, 204 and 304, whose length fields are kept as given).
    Every cache hit comes this way: the arguments may be given by position.
    """
    if reason is None or (status == 200 and reason == "OK"):
        line = _STATUS_LINES.get(status)
    else:
        line = None
    if line is None:
        phrase = reason.encode("latin-1") if reason is not None else b"Status"
        line = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
    if headers:
        block = block + b"".join([name + b": " + value + b"\r\n" for name, value in headers])
    if status == 204 or status == 304:
        end = b"\r\n\r\n" if keep_alive else b"\r\nConnection: close\r\n\r\n"
        return b"".join((line, block, server_tag, b"X-Request-Id: ", request_id, end))
    end = (b"\r\nContent-Length: %d\r\n\r\n" if keep_alive else b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n") % (
        len(body) if length is None else length
    )
    if head_only:
        return b"".join((line, block, server_tag, b"X-Request-Id: ", request_id, end))
    return b"".join((line, block, server_tag, b"X-Request-Id: ", request_id, end, body))
