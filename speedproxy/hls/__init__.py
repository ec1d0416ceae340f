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
- :mod:`~speedproxy.hls.live`: players held until a refreshed live
  playlist's new segments are stored (prefetch ahead of live players);
- :mod:`~speedproxy.hls.streams`: per-stream figures (viewers, bytes, hit ratio);
- :mod:`~speedproxy.hls.bandwidth`: ``rate_limit`` and ``max_bandwidth`` pacing;
- :mod:`~speedproxy.hls.heat`: decaying popularity for the memory tier;
- :mod:`~speedproxy.hls.warmup`: warm-up jobs (``/api/v1/hls/warmup``);
- :mod:`~speedproxy.hls.filter`: the filters, and the per-worker state and
  counters (:func:`~speedproxy.hls.filter.hls_info`).

Workers do not share what they know of viewers (each follows the
connections it serves); per-stream figures are summed by the admin API
(:mod:`speedproxy.admin.api_hls_streams`).
"""
