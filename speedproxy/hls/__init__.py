"""speedproxy as an HLS edge (issue 13): playlist-aware caching and prefetch.

A route with ``hls: {enabled: true}`` (and its cache enabled) gets the
filters of :mod:`speedproxy.hls.filter` around its cache filter.  Modules:

- :mod:`~speedproxy.hls.playlist`: recognising and parsing playlists
  (``m3u8``), their kinds (master, VOD, EVENT, live) and lifetimes;
- :mod:`~speedproxy.hls.rewrite`: rewriting playlists (variant cap,
  absolute URIs to the origin made relative);
- :mod:`~speedproxy.hls.registry`: the renditions and segments a worker
  knows of, per route;
- :mod:`~speedproxy.hls.viewers`: sequential viewing vs seeking;
- :mod:`~speedproxy.hls.prefetch`: fetching the next segments into the cache;
- :mod:`~speedproxy.hls.filter`: the filters, and the per-worker state and
  counters (:func:`~speedproxy.hls.filter.hls_info`).

Not here yet (see README.rst, "HLS"): LL-HLS parts and blocking playlist
reloads, warmup and streams API calls, popularity-driven memory tier,
bandwidth limits (``rate_limit``, ``max_bandwidth`` are accepted, not
applied), Prometheus metrics, stream knowledge shared between workers.
"""
