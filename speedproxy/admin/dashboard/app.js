/* speedproxy dashboard: polls this admin listener's JSON API every second.
 *
 * Open calls (no key): stats, status.  Keyed calls (X-API-Key when one is
 * set): api/v1/performance/dashboard, cache/info.  The key lives in the
 * variable `apiKey` below and nowhere else: not in localStorage,
 * sessionStorage, cookies or the URL.  A key passed as `#key=...` is read
 * once and the fragment is removed from the address bar and history.
 *
 * Every figure carries data-metric="name" and data-value="raw value" (what
 * the API said, before formatting), which the end-to-end test reads.
 */
(function () {
  "use strict";

  var REFRESH_MS = 1000;     // one round of calls per second (the issue asks for <= 2 s)
  var TIMEOUT_MS = 4000;     // a call not answered by then counts as failed
  var RATE_WINDOW_S = 5;     // requests/s over the /stats samples of the last 5 s
  var SERIES_LENGTH = 60;    // points in each sparkline (a minute)

  var apiKey = null;         // the operator's key: memory only
  var keyRefused = false;    // the last key was refused (401): ask again
  var keyRequired = null;    // from /status (api_key_required)
  var ticks = 0;
  var lastGood = null;       // Date of the last answered /stats
  var rateSamples = [];      // {t: uptime_seconds, requests, workers: {slot: {pid, requests}}}
  var series = {rps: [], p99: [], errors: [], connections: [], hits: []};

  // -- formatting ----------------------------------------------------------------

  function isNum(value) { return typeof value === "number" && isFinite(value); }

  function fmtInt(value) {
    return isNum(value) ? Math.round(value).toLocaleString("en-US") : "–";
  }

  function fmtRate(value) {
    if (!isNum(value)) return "–";
    if (value >= 100) return Math.round(value).toLocaleString("en-US");
    return value.toFixed(1);
  }

  function fmtMs(value) {
    if (!isNum(value)) return "–";
    if (value >= 1000) return (value / 1000).toFixed(2) + " s";
    if (value >= 100) return value.toFixed(0) + " ms";
    if (value >= 10) return value.toFixed(1) + " ms";
    return value.toFixed(2) + " ms";
  }

  function fmtPct(fraction) {
    if (!isNum(fraction)) return "–";
    var pct = fraction * 100;
    return (pct >= 10 || pct === 0 ? pct.toFixed(1) : pct.toFixed(2)) + " %";
  }

  function fmtBytes(value) {
    if (!isNum(value)) return "–";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return (i === 0 ? String(value) : value.toFixed(value >= 100 ? 0 : 1)) + " " + units[i];
  }

  function fmtDuration(seconds) {
    if (!isNum(seconds)) return "–";
    var s = Math.floor(seconds);
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }

  function fmtClock(date) {
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(date.getHours()) + ":" + two(date.getMinutes()) + ":" + two(date.getSeconds());
  }

  // -- DOM helpers ------------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  /* Set every [data-metric=name] under `root`: raw value and shown text. */
  function metric(name, value, text, root) {
    var nodes = (root || document).querySelectorAll('[data-metric="' + name + '"]');
    for (var i = 0; i < nodes.length; i++) {
      nodes[i].setAttribute("data-value", value === null || value === undefined ? "" : String(value));
      nodes[i].textContent = text === undefined ? (value === null || value === undefined ? "–" : String(value)) : text;
    }
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) {
      for (var key in attrs) {
        if (Object.prototype.hasOwnProperty.call(attrs, key) && attrs[key] !== undefined && attrs[key] !== null) {
          node.setAttribute(key, String(attrs[key]));
        }
      }
    }
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  /* A table cell holding one figure. */
  function cell(name, value, text, cls) {
    var td = el("td", cls ? {"class": cls} : null);
    var span = el("span", {"data-metric": name, "data-value": value === null || value === undefined ? "" : value},
      text === undefined ? (value === null || value === undefined ? "–" : String(value)) : text);
    td.appendChild(span);
    return td;
  }

  function svgEl(tag, attrs) {
    var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var key in attrs) {
      if (Object.prototype.hasOwnProperty.call(attrs, key)) node.setAttribute(key, String(attrs[key]));
    }
    return node;
  }

  /* A horizontal bar for a 0..1 fraction (SVG: no inline styles under the CSP). */
  function bar(fraction, cls) {
    var td = el("td", {"class": "bar-cell"});
    var svg = svgEl("svg", {"class": "bar " + (cls || ""), viewBox: "0 0 100 8", preserveAspectRatio: "none"});
    svg.appendChild(svgEl("rect", {"class": "bar-bg", x: 0, y: 0, width: 100, height: 8}));
    var f = isNum(fraction) ? Math.max(0, Math.min(1, fraction)) : 0;
    svg.appendChild(svgEl("rect", {"class": "bar-fg", x: 0, y: 0, width: (f * 100).toFixed(2), height: 8}));
    td.appendChild(svg);
    return td;
  }

  function push(list, value) {
    list.push(isNum(value) ? value : null);
    while (list.length > SERIES_LENGTH) list.shift();
  }

  function spark(id, values) {
    var svg = $(id);
    if (!svg) return;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var numbers = values.filter(isNum);
    if (numbers.length < 2) return;
    var max = Math.max.apply(null, numbers);
    var min = 0;
    if (max <= min) max = min + 1;
    var step = 100 / (SERIES_LENGTH - 1);
    var offset = SERIES_LENGTH - values.length;
    var points = [];
    for (var i = 0; i < values.length; i++) {
      if (!isNum(values[i])) continue;
      var x = (offset + i) * step;
      var y = 29 - ((values[i] - min) / (max - min)) * 27;
      points.push(x.toFixed(2) + "," + y.toFixed(2));
    }
    var first = points[0].split(",")[0], last = points[points.length - 1].split(",")[0];
    svg.appendChild(svgEl("polygon", {"class": "spark-area", points: first + ",30 " + points.join(" ") + " " + last + ",30"}));
    svg.appendChild(svgEl("polyline", {"class": "spark-line", points: points.join(" ")}));
  }

  function replaceRows(tbody, rows, empty, columns) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    if (!rows.length) {
      var tr = el("tr", {"class": "empty"});
      tr.appendChild(el("td", {colspan: columns}, empty));
      tbody.appendChild(tr);
      return;
    }
    rows.forEach(function (row) { tbody.appendChild(row); });
  }

  // -- the key ------------------------------------------------------------------------

  /* Take a key given as #key=... (at load, or pasted into an open page); true if there was one. */
  function takeKeyFromFragment() {
    var hash = window.location.hash;
    if (!hash || hash.length < 2) return false;
    var params = new URLSearchParams(hash.slice(1));
    if (!params.has("key")) return false;
    apiKey = params.get("key");
    keyRefused = false;
    // Forget it in the URL: the address bar, the history entry and any bookmark made later.
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    return true;
  }

  function needKey() {
    return keyRequired === true && apiKey === null;
  }

  function showKeyPanel() {
    var panel = $("key-panel");
    var wanted = needKey();
    panel.hidden = !wanted;
    $("key-message").textContent = keyRefused ? "That key was refused (401). Type the key again." : "";
    $("forget-key").hidden = apiKey === null;
  }

  function setupKeyForm() {
    $("key-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var input = $("key-input");
      var value = input.value;
      input.value = "";
      if (!value) return;
      apiKey = value;
      keyRefused = false;
      showKeyPanel();
      restart();
    });
    window.addEventListener("hashchange", function () {
      if (takeKeyFromFragment()) {
        showKeyPanel();
        restart();
      }
    });
    $("forget-key").addEventListener("click", function () {
      apiKey = null;
      keyRefused = false;
      showKeyPanel();
      restart();
    });
  }

  // -- calls --------------------------------------------------------------------------

  /* GET `path` (relative to /dashboard, so a path prefix in front of the listener works). */
  function getJSON(path, keyed) {
    var headers = {"Accept": "application/json"};
    if (keyed && apiKey !== null) headers["X-API-Key"] = apiKey;
    var controller = new AbortController();
    var timer = setTimeout(function () { controller.abort(); }, TIMEOUT_MS);
    return fetch(path, {
      headers: headers, cache: "no-store", credentials: "omit", redirect: "error",
      referrerPolicy: "no-referrer", signal: controller.signal
    }).then(function (response) {
      return response.json().then(function (body) { return body; }, function () { return null; })
        .then(function (body) {
          clearTimeout(timer);
          return {path: path, status: response.status, body: body};
        });
    }, function (error) {
      clearTimeout(timer);
      return {path: path, status: 0, body: null, error: error && error.name === "AbortError" ? "timed out" : String(error)};
    });
  }

  var timer = null;
  var generation = 0;

  function restart() {
    generation += 1;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    tick();
  }

  function tick() {
    var mine = generation;
    var started = Date.now();
    Promise.all([getJSON("stats", false), getJSON("status", false)]).then(function (open) {
      var status = open[1];
      if (status.status === 200 && status.body) keyRequired = !!status.body.api_key_required;
      var keyed = [];
      if (status.status === 200 && !needKey()) {
        keyed = [getJSON("api/v1/performance/dashboard?limit=8", true), getJSON("cache/info", true)];
      }
      return Promise.all(keyed).then(function (answers) { return {stats: open[0], status: status, perf: answers[0], cache: answers[1]}; });
    }).then(function (round) {
      if (mine !== generation) return;  // a newer round started (key typed or forgotten)
      try {
        render(round);
      } catch (error) {
        banner("The dashboard could not draw this answer: " + error);
      }
      timer = setTimeout(tick, Math.max(0, REFRESH_MS - (Date.now() - started)));
    });
  }

  // -- drawing ------------------------------------------------------------------------

  function banner(text) {
    var node = $("banner");
    node.hidden = !text;
    node.textContent = text || "";
  }

  function failure(answer) {
    if (!answer) return null;
    if (answer.status === 0) return answer.path + ": " + answer.error;
    if (answer.status === 401) return null;
    if (answer.status >= 400) {
      var detail = answer.body && answer.body.detail ? " (" + answer.body.detail + ")" : "";
      return answer.path + ": HTTP " + answer.status + detail;
    }
    return null;
  }

  function render(round) {
    var problems = [round.stats, round.status, round.perf, round.cache].map(failure).filter(function (x) { return x; });
    var refused = [round.perf, round.cache].some(function (a) { return a && a.status === 401; });
    if (refused) {
      apiKey = null;
      keyRefused = true;
    }
    showKeyPanel();
    var statsOk = round.stats.status === 200 && round.stats.body;
    if (statsOk) {
      lastGood = new Date();
      drawStats(round.stats.body);
    }
    if (round.status.status === 200 && round.status.body) drawStatus(round.status.body);
    if (round.perf && round.perf.status === 200 && round.perf.body) drawPerformance(round.perf.body, statsOk ? round.stats.body : null);
    else if (needKey()) drawLocked();
    if (round.cache && round.cache.status === 200 && round.cache.body) drawCache(round.cache.body);

    if (problems.length) {
      banner("Cannot read the admin API: " + problems.join("; ") + ". Retrying every second" +
        (lastGood ? "; figures are from " + fmtClock(lastGood) + "." : "."));
    } else {
      banner("");
    }
    ticks += 1;
    var state = !statsOk ? "error" : needKey() ? "need-key" : problems.length ? "error" : "live";
    document.body.setAttribute("data-state", state);
    document.body.setAttribute("data-ticks", String(ticks));
    document.body.classList.toggle("stale", !statsOk);
    metric("updated", lastGood ? lastGood.toISOString() : null, lastGood ? fmtClock(lastGood) : "–");
    ["rps", "p99", "errors", "connections", "hits"].forEach(function (name) { spark("spark-" + name, series[name]); });
  }

  function rate(get) {
    if (rateSamples.length < 2) return null;
    var first = rateSamples[0], last = rateSamples[rateSamples.length - 1];
    var dt = last.t - first.t;
    var a = get(first), b = get(last);
    if (!(dt > 0) || !isNum(a) || !isNum(b) || b < a) return null;
    return (b - a) / dt;
  }

  function drawStats(stats) {
    var totals = stats.totals || {};
    var sample = {t: stats.uptime_seconds, requests: totals.requests, workers: {}};
    (stats.workers || []).forEach(function (w) { sample.workers[w.slot] = {pid: w.pid, requests: w.requests}; });
    var previous = rateSamples[rateSamples.length - 1];
    if (previous && !(sample.t > previous.t)) {
      if (sample.t < previous.t) rateSamples = [];  // the master restarted
      else sample = null;                            // the same sample again
    }
    if (sample) {
      rateSamples.push(sample);
      while (rateSamples.length > 2 && sample.t - rateSamples[0].t > RATE_WINDOW_S) rateSamples.shift();
    }
    var rps = rate(function (s) { return s.requests; });
    metric("requests_per_second", rps, fmtRate(rps));
    metric("requests_total", totals.requests, fmtInt(totals.requests));
    metric("active_connections", totals.active_connections, fmtInt(totals.active_connections));
    metric("active_upstream_requests", totals.active_upstream_requests, fmtInt(totals.active_upstream_requests));
    var status = totals.status || {};
    metric("errors_total", status["5xx"], fmtInt(status["5xx"]));
    push(series.rps, rps);
    push(series.connections, totals.active_connections);
    metric("uptime", stats.uptime_seconds, fmtDuration(stats.uptime_seconds));
    metric("config_version", stats.config_version);
    metric("version", stats.version);

    var cache = stats.cache;
    if (cache && isNum(cache.hit_ratio)) {
      metric("cache_hit_ratio", cache.hit_ratio, fmtPct(cache.hit_ratio));
      metric("cache_origin_requests", cache.origin_requests, fmtInt(cache.origin_requests));
      push(series.hits, cache.hit_ratio);
    } else {
      metric("cache_hit_ratio", null, cache ? "no lookups yet" : "cache off");
      metric("cache_origin_requests", null);
      push(series.hits, null);
    }
    drawWorkers(stats, null);
  }

  var lastUsage = null;

  function drawWorkers(stats, usage) {
    if (usage) lastUsage = usage;
    var processes = (lastUsage && lastUsage.processes) || [];
    var bySlot = {};
    processes.forEach(function (p) { if (p.role === "worker") bySlot[p.slot] = p; });
    var workers = stats.workers || [];
    var rates = workers.map(function (w) {
      return rate(function (s) {
        var seen = s.workers[w.slot];
        return seen && seen.pid === w.pid ? seen.requests : null;
      });
    });
    var sum = rates.reduce(function (acc, r) { return acc + (isNum(r) ? r : 0); }, 0);
    var rows = workers.map(function (w, i) {
      var tr = el("tr", {"data-worker": w.slot});
      var proc = bySlot[w.slot] && bySlot[w.slot].pid === w.pid ? bySlot[w.slot] : null;
      tr.appendChild(cell("worker_slot", w.slot));
      tr.appendChild(cell("worker_pid", w.pid));
      tr.appendChild(cell("worker_state", w.ready ? "ready" : "starting", undefined, w.ready ? "ok" : "warn"));
      tr.appendChild(cell("worker_requests_per_second", rates[i], fmtRate(rates[i]), "num"));
      tr.appendChild(bar(sum > 0 && isNum(rates[i]) ? rates[i] / sum : 0, "share"));
      tr.appendChild(cell("worker_requests", w.requests, fmtInt(w.requests), "num"));
      tr.appendChild(cell("worker_active_connections", w.active_connections, fmtInt(w.active_connections), "num"));
      tr.appendChild(cell("worker_errors", (w.status || {})["5xx"], fmtInt((w.status || {})["5xx"]), "num"));
      tr.appendChild(cell("worker_avg_latency_ms", w.avg_latency_ms, fmtMs(w.avg_latency_ms), "num"));
      tr.appendChild(cell("worker_cpu_percent", proc ? proc.cpu_percent : null, proc && isNum(proc.cpu_percent) ? proc.cpu_percent.toFixed(1) + " %" : "–", "num"));
      tr.appendChild(cell("worker_rss_bytes", proc ? proc.rss_bytes : null, proc ? fmtBytes(proc.rss_bytes) : "–", "num"));
      return tr;
    });
    replaceRows($("workers"), rows, "no worker", 11);
    metric("workers_ready", workers.filter(function (w) { return w.ready; }).length,
      workers.filter(function (w) { return w.ready; }).length + " / " + workers.length);
    var master = processes.filter(function (p) { return p.role === "master"; })[0];
    $("master-usage").textContent = master
      ? "master pid " + master.pid + ": CPU " + (isNum(master.cpu_percent) ? master.cpu_percent.toFixed(1) : "–") +
        " %, RSS " + fmtBytes(master.rss_bytes) + ", " + fmtInt(master.open_fds) + " open files"
      : "";
  }

  function drawStatus(status) {
    metric("mode", status.mode);
    var cert = status.tls_certificate;
    var box = $("certificate");
    box.classList.remove("ok", "warn", "crit", "off");
    if (!cert) {
      metric("cert_days_left", null, status.ssl ? "unknown" : "TLS off");
      metric("cert_not_after", null);
      metric("cert_subject", null);
      box.classList.add("off");
      return;
    }
    var days = (Date.parse(cert.not_after) - Date.now()) / 86400000;
    var shown = !isNum(days) ? "unknown" : days < 0 ? "expired" : Math.floor(days) + " days left";
    metric("cert_days_left", isNum(days) ? Math.floor(days) : null, shown);
    metric("cert_not_after", cert.not_after);
    metric("cert_subject", cert.subject);
    box.classList.add(!isNum(days) || days < 3 ? "crit" : days < 14 ? "warn" : "ok");
  }

  function drawLocked() {
    metric("health_status", null, "key needed");
    ["latency_p50_ms", "latency_p99_ms", "latency_avg_ms", "error_rate", "client_error_rate", "in_flight",
      "slow_total", "slow_last_60s", "slow_threshold_ms", "cache_info_hit_rate"].forEach(function (name) { metric(name, null); });
    replaceRows($("backends"), [], "the API key is needed for backend state", 11);
    replaceRows($("slow"), [], "the API key is needed for slow requests", 7);
    replaceRows($("cache-tiers"), [], "the API key is needed for the cache tiers", 8);
    var alerts = $("alerts");
    while (alerts.firstChild) alerts.removeChild(alerts.firstChild);
    alerts.setAttribute("data-value", "");
    alerts.appendChild(el("li", {"class": "none"}, "the API key is needed for alerts"));
  }

  function drawPerformance(perf, stats) {
    var health = perf.health || {};
    var badge = document.querySelector('[data-metric="health_status"]');
    metric("health_status", health.status || null, health.status || "–");
    badge.className = "badge " + (health.status || "");

    var window10 = ((perf.stats || {}).windows || {}).last_10s || {};
    metric("latency_p50_ms", window10.p50_ms, fmtMs(window10.p50_ms));
    metric("latency_p99_ms", window10.p99_ms, fmtMs(window10.p99_ms));
    metric("latency_avg_ms", window10.avg_latency_ms, fmtMs(window10.avg_latency_ms));
    metric("error_rate", window10.error_rate, fmtPct(window10.error_rate));
    metric("client_error_rate", window10.client_error_rate, fmtPct(window10.client_error_rate));
    metric("in_flight", (perf.stats || {}).active_requests, fmtInt((perf.stats || {}).active_requests));
    push(series.p99, window10.p99_ms);
    push(series.errors, window10.error_rate);

    if (stats) drawWorkers(stats, perf.resource_usage);

    var backendRows = (perf.backends || []).map(function (b) {
      var runtime = b.runtime || {}, counters = b.stats || {};
      var health = !b.active ? "inactive" : b.weight === 0 ? "draining" : b.healthy ? "up" : "down";
      var tr = el("tr", {"data-backend": b.upstream + "/" + b.id, "data-health": health});
      tr.appendChild(cell("backend_upstream", b.upstream));
      tr.appendChild(cell("backend_id", b.id));
      tr.appendChild(cell("backend_address", b.scheme + "://" + b.host + ":" + b.port));
      var healthText = health + (b.health_check_up === false ? " (check)" : runtime.healthy_in_workers !== undefined &&
        runtime.healthy_in_workers < runtime.workers ? " (" + runtime.healthy_in_workers + "/" + runtime.workers + " workers)" : "");
      tr.appendChild(cell("backend_health", health, healthText, "health " + health));
      tr.appendChild(cell("backend_weight", b.weight, fmtInt(b.weight), "num"));
      tr.appendChild(cell("backend_in_flight", runtime.in_flight, fmtInt(runtime.in_flight), "num"));
      var answered = counters.requests > 0 || runtime.ewma_response_ms > 0;  // no response time before a response
      tr.appendChild(cell("backend_ewma_ms", runtime.ewma_response_ms, answered ? fmtMs(runtime.ewma_response_ms) : "–", "num"));
      tr.appendChild(cell("backend_avg_ms", counters.avg_response_ms, answered ? fmtMs(counters.avg_response_ms) : "–", "num"));
      tr.appendChild(cell("backend_requests", counters.requests, fmtInt(counters.requests), "num"));
      tr.appendChild(cell("backend_failures", counters.failures, fmtInt(counters.failures), "num"));
      tr.appendChild(cell("backend_load", runtime.reported_load, isNum(runtime.reported_load) ? fmtPct(runtime.reported_load) : "–", "num"));
      return tr;
    });
    replaceRows($("backends"), backendRows, "no backend", 11);

    var alerts = $("alerts");
    while (alerts.firstChild) alerts.removeChild(alerts.firstChild);
    var items = [];
    (health.reasons || []).forEach(function (reason) {
      items.push(el("li", {"class": "crit", "data-alert": "unhealthy"}, reason));
    });
    (health.alerts || []).forEach(function (a) {
      var li = el("li", {"class": a.severity === "critical" ? "crit" : "warn", "data-alert": a.metric, "data-where": a.where});
      li.appendChild(el("b", null, a.metric));
      li.appendChild(document.createTextNode(" " + a.value + " ≥ " + a.threshold + " (" + a.where + ", " + a.severity + ")"));
      items.push(li);
    });
    alerts.setAttribute("data-value", String(items.length));
    if (!items.length) items.push(el("li", {"class": "none"}, "no alert: every threshold is met"));
    items.forEach(function (li) { alerts.appendChild(li); });

    var slow = perf.slow_requests || {};
    metric("slow_threshold_ms", slow.threshold_ms, fmtMs(slow.threshold_ms));
    metric("slow_last_60s", slow.last_60s, fmtInt(slow.last_60s));
    metric("slow_total", slow.total, fmtInt(slow.total));
    var slowRows = (slow.requests || []).map(function (r) {
      var tr = el("tr", {"data-slow": r.request_id});
      tr.appendChild(cell("slow_time", r.time, fmtClock(new Date(r.time * 1000))));
      tr.appendChild(cell("slow_duration_ms", r.duration_ms, fmtMs(r.duration_ms), "num"));
      tr.appendChild(cell("slow_method", r.method));
      tr.appendChild(cell("slow_path", r.path, r.path && r.path.length > 60 ? r.path.slice(0, 57) + "..." : r.path, "path"));
      tr.appendChild(cell("slow_status", r.status, undefined, "num"));
      tr.appendChild(cell("slow_route", r.route));
      tr.appendChild(cell("slow_backend", r.backend_id));
      return tr;
    });
    replaceRows($("slow"), slowRows, "none over the threshold", 7);
  }

  function drawCache(info) {
    metric("cache_info_hit_rate", info.hit_rate, info.enabled ? fmtPct(info.hit_rate) : "cache off");
    var tiers = info.tiers || {};
    var rows = ["memory", "disk"].filter(function (name) { return tiers[name]; }).map(function (name) {
      var t = tiers[name];
      var tr = el("tr", {"data-tier": name});
      tr.appendChild(cell("tier_name", name));
      tr.appendChild(cell("tier_entries", t.entries, fmtInt(t.entries), "num"));
      tr.appendChild(cell("tier_bytes", t.bytes, fmtBytes(t.bytes), "num"));
      tr.appendChild(cell("tier_max_bytes", t.max_bytes, fmtBytes(t.max_bytes), "num"));
      tr.appendChild(bar(t.max_bytes ? t.bytes / t.max_bytes : 0, "use"));
      tr.appendChild(cell("tier_hits", t.hits, fmtInt(t.hits), "num"));
      tr.appendChild(cell("tier_hit_ratio", t.hit_ratio, fmtPct(t.hit_ratio), "num"));
      tr.appendChild(cell("tier_evictions", t.evictions, fmtInt(t.evictions), "num"));
      return tr;
    });
    replaceRows($("cache-tiers"), rows, info.enabled ? "no tier" : "no route caches", 8);
  }

  // -- start --------------------------------------------------------------------------

  takeKeyFromFragment();
  setupKeyForm();
  tick();
}());
