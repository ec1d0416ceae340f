"""Rewriting playlists line by line: variant caps and absolute URIs.

Everything not changed is kept byte for byte (tags, comments, order, line
endings), so a player sees the origin's playlist minus what was taken out.

- **Variant cap** (master playlists): ``EXT-X-STREAM-INF`` variants (each a
  tag line and the URI line after it) and ``EXT-X-I-FRAME-STREAM-INF``
  ones whose ``BANDWIDTH`` is over the cap are dropped; when none of a
  kind fits, the lowest ones are kept (a player always has something).
- **Absolute URIs** pointing at the origin (URI lines and ``URI="..."``
  attributes, in any playlist) become path-absolute references, so players
  resolve them against our address and come back through us.
"""

from __future__ import annotations

import re
from typing import Callable, Collection, List, Optional, Tuple
from urllib.parse import urlsplit

_BANDWIDTH = re.compile(r"(?:^|,)\s*BANDWIDTH=(\d+)")
_URI_ATTRIBUTE = re.compile(r'(URI=")([^"]*)(")')
_STREAM_INF = "#EXT-X-STREAM-INF:"
_IFRAME_INF = "#EXT-X-I-FRAME-STREAM-INF:"


def bandwidth_of(tag: str) -> Optional[int]:
    """The ``BANDWIDTH`` attribute of a ``*-STREAM-INF`` tag line (not ``AVERAGE-BANDWIDTH``)."""
    attributes = tag.split(":", 1)[1] if ":" in tag else ""
    match = _BANDWIDTH.search(attributes)
    return int(match.group(1)) if match else None


def _relative(uri: str, hosts: Collection[str]) -> str:
    """``uri`` as a path-absolute reference when it is absolute and points at ``hosts``."""
    if "//" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "") or not parts.netloc or parts.netloc.lower() not in hosts:
        return uri
    return (parts.path or "/") + ("?" + parts.query if parts.query else "")


def _split_ending(line: str) -> Tuple[str, str]:
    stripped = line.rstrip("\r\n")
    return stripped, line[len(stripped):]


def rewrite_playlist(body: bytes, max_bandwidth: int = 0, origin_hosts: Collection[str] = ()) -> bytes:
    """The playlist ``body`` with variants over ``max_bandwidth`` (bits/s, 0:
    no cap) dropped and absolute URIs to ``origin_hosts`` (lower-cased
    ``host[:port]``) made relative.  Returns ``body`` itself when nothing changes."""
    text = body.decode("utf-8", "surrogateescape")
    lines = text.splitlines(keepends=True)
    drop = set(_capped(lines, max_bandwidth)) if max_bandwidth > 0 else set()
    if not drop and not origin_hosts:
        return body
    out: List[str] = []
    changed = bool(drop)
    for index, line in enumerate(lines):
        if index in drop:
            continue
        if origin_hosts and "//" in line:
            content, ending = _split_ending(line)
            if content.startswith("#"):
                new = _URI_ATTRIBUTE.sub(lambda match: match.group(1) + _relative(match.group(2), origin_hosts) + match.group(3), content)
            elif content.strip():
                new = _relative(content.strip(), origin_hosts)
                new = new if new != content.strip() else content
            else:
                new = content
            if new != content:
                changed = True
                line = new + ending
        out.append(line)
    if not changed:
        return body
    return "".join(out).encode("utf-8", "surrogateescape")


def _capped(lines: List[str], cap: int) -> List[int]:
    """Indexes of the lines to drop to keep only variants of at most ``cap`` bits/s."""
    # (line indexes, bandwidth) of each variant, per kind.
    streams: List[Tuple[List[int], int]] = []
    iframes: List[Tuple[List[int], int]] = []
    index = 0
    count = len(lines)
    while index < count:
        content = lines[index].strip()
        if content.startswith(_STREAM_INF):
            bandwidth = bandwidth_of(content)
            taken = [index]
            # The URI line is the next line that is neither blank nor a tag/comment.
            following = index + 1
            while following < count and (not lines[following].strip() or lines[following].lstrip().startswith("#")):
                if lines[following].lstrip().startswith(_STREAM_INF):
                    break
                following += 1
            if following < count and not lines[following].lstrip().startswith("#"):
                taken.append(following)
            if bandwidth is not None:
                streams.append((taken, bandwidth))
        elif content.startswith(_IFRAME_INF):
            bandwidth = bandwidth_of(content)
            if bandwidth is not None:
                iframes.append(([index], bandwidth))
        index += 1
    drop: List[int] = []
    for variants in (streams, iframes):
        if not variants:
            continue
        fitting = [bandwidth for _, bandwidth in variants if bandwidth <= cap]
        limit = cap if fitting else min(bandwidth for _, bandwidth in variants)
        for taken, bandwidth in variants:
            if bandwidth > limit:
                drop += taken
    return drop


def origin_hosts(request_host: bytes, backends: Collection[Tuple[str, int, str]]) -> frozenset:
    """The ``host[:port]`` forms (lower-cased) under which playlists may name
    the origin: the Host the request came with (which the origin was sent),
    and each backend's address, with and without its scheme's default port."""
    hosts = set()
    if request_host:
        value = request_host.decode("latin-1").lower()
        hosts.add(value)
        if value.endswith(":80") or value.endswith(":443"):
            hosts.add(value.rsplit(":", 1)[0])
    for host, port, scheme in backends:
        name = host.lower()
        if ":" in name and not name.startswith("["):
            name = "[%s]" % name
        hosts.add("%s:%d" % (name, port))
        if (scheme, port) in (("http", 80), ("https", 443)):
            hosts.add(name)
    return frozenset(hosts)


def map_uris(body: bytes, transform: Callable[[str], str]) -> bytes:
    """The playlist ``body`` with every URI (URI lines and ``URI="..."``
    attributes) replaced by ``transform(uri)``; everything else kept byte
    for byte.  Returns ``body`` itself when nothing changes (signed URIs,
    :mod:`speedproxy.edge.signed_urls`)."""
    text = body.decode("utf-8", "surrogateescape")
    out: List[str] = []
    changed = False
    for line in text.splitlines(keepends=True):
        content, ending = _split_ending(line)
        if content.startswith("#"):
            new = _URI_ATTRIBUTE.sub(lambda match: match.group(1) + transform(match.group(2)) + match.group(3), content)
        elif content.strip():
            new = transform(content.strip())
            new = new if new != content.strip() else content
        else:
            new = content
        if new != content:
            changed = True
            line = new + ending
        out.append(line)
    if not changed:
        return body
    return "".join(out).encode("utf-8", "surrogateescape")
