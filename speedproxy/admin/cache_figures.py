"""Combining the workers' cache answers into one view (``/cache/*`` answers).

Each worker has its own memory tier, so its figures are summed; the disk
tier is shared by the workers of a host, so its size comes from any one
worker's answer (they are the same) while its hit counters, which each
worker keeps for its own lookups, are summed.  The rows are those of a
fan-out's ``each`` (see :mod:`speedproxy.admin.cache_worker`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Sequence

from speedproxy.admin.json_resource import APIError, bad_request

#: Memory tier figures summed over the workers.
MEMORY_FIELDS = ("entries", "bytes", "max_bytes", "evictions", "hits")
#: Disk tier figures shown (from one worker, ``hits`` summed).
DISK_FIELDS = ("entries", "bytes", "live_bytes", "max_bytes", "evictions", "storing", "errors", "last_error")


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def worker_errors(rows: Iterable[Mapping[str, Any]]) -> List[str]:
    """``worker N: message`` for every row that failed."""
    return [f"worker {row['slot']}: {row['error']}" for row in rows if "error" in row]


def combine_info(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """``/cache/info``: the TMDB proxy's fields plus ``tiers`` and ``workers``.

    ``hit_rate`` (0..1) is lookups answered from either tier over all
    lookups; per tier, ``hit_ratio`` is the memory tier's share of all
    lookups, and the disk tier's share of the lookups memory missed.
    """
    infos = [(row, row["result"]) for row in rows if "result" in row]
    enabled = [(row, info) for row, info in infos if info.get("enabled")]
    memory = {name: sum(int(info.get("memory", {}).get(name, 0) or 0) for _, info in enabled) for name in MEMORY_FIELDS}
    misses = sum(int(info.get("misses", 0) or 0) for _, info in enabled)
    disks = [info["disk"] for _, info in enabled if isinstance(info.get("disk"), Mapping)]
    disk_hits = sum(int(disk.get("hits", 0) or 0) for disk in disks)
    lookups = memory["hits"] + disk_hits + misses
    memory["hit_ratio"] = _ratio(memory["hits"], lookups)
    memory["workers"] = len(enabled)
    tiers: Dict[str, Any] = {"memory": memory}
    if disks:
        disk = {name: disks[0].get(name) for name in DISK_FIELDS if name in disks[0]}
        disk["hits"] = disk_hits
        disk["hit_ratio"] = _ratio(disk_hits, disk_hits + misses)
        tiers["disk"] = disk
    entries = memory["entries"] + int(tiers.get("disk", {}).get("entries", 0) or 0)
    size = memory["bytes"] + int(tiers.get("disk", {}).get("bytes", 0) or 0)
    limit = memory["max_bytes"] + int(tiers.get("disk", {}).get("max_bytes", 0) or 0)
    hits = memory["hits"] + disk_hits
    answer: Dict[str, Any] = {
        "enabled": bool(enabled),
        "entries": entries,
        "size_bytes": size,
        "max_size_bytes": limit,
        "hits": hits,
        "misses": misses,
        "hit_rate": _ratio(hits, hits + misses),
        "tiers": tiers,
        "workers": [
            {"slot": row["slot"], "pid": row["pid"], "enabled": bool(info.get("enabled")),
             "memory": info.get("memory", {}), "misses": info.get("misses", 0)}
            for row, info in infos
        ],
    }
    hls = combine_hls(info.get("hls") for _, info in infos)
    if hls:
        answer["hls"] = hls
        for worker, (_, info) in zip(answer["workers"], infos):
            if info.get("hls"):
                worker["hls"] = info["hls"]
    errors = worker_errors(rows)
    if errors:
        answer["errors"] = errors
    return answer


def combine_hls(rows: Iterable[Any]) -> Dict[str, Any]:
    """The HLS routes' per-worker figures summed per route (``prefetch`` and
    ``live_hold`` per result)."""
    routes: Dict[str, Any] = {}
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        for route, figures in row.items():
            total = routes.setdefault(route, {"prefetch": {}})
            for name, value in figures.items():
                if name in ("prefetch", "live_hold") and isinstance(value, Mapping):
                    bucket = total.setdefault(name, {})
                    for result, count in value.items():
                        bucket[result] = bucket.get(result, 0) + count
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    total[name] = total.get(name, 0) + value
    return routes


def union_keys(rows: Sequence[Mapping[str, Any]], limit: int, offset: int = 0) -> List[str]:
    """The keys every worker listed, each once, sorted, ``offset`` skipped, at most ``limit``."""
    keys = set()
    for row in rows:
        keys.update(row.get("result") or ())
    return sorted(keys)[offset : offset + limit]


def any_enabled(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(isinstance(row.get("result"), Mapping) and row["result"].get("enabled") for row in rows)


def counts_or_fail(rows: Sequence[Mapping[str, Any]], key: str, what: str) -> Dict[str, Any]:
    """``{key: total, "workers": [{slot, pid, key: n}]}`` when every worker answered.

    :raises APIError: 400 when a worker refused the arguments; 500
        ``<what>_incomplete`` naming the workers that did not answer (the
        others' counts are in the answer).
    """
    workers = [
        {"slot": row["slot"], "pid": row["pid"], key: row["result"]}
        if "result" in row
        else {"slot": row["slot"], "pid": row["pid"], "error": row["error"]}
        for row in rows
    ]
    total = sum(int(row["result"]) for row in rows if "result" in row)
    refused = [row for row in rows if row.get("refused")]
    if refused:
        raise bad_request(str(refused[0]["error"]))
    errors = worker_errors(rows)
    if errors:
        raise APIError(
            500,
            f"{what}_incomplete",
            f"{what} reached {len(rows) - len(errors)} of {len(rows)} workers; " + "; ".join(errors),
            extra={key: total, "workers": workers},
        )
    return {key: total, "workers": workers}
