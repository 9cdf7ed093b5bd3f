"""Prometheus metrics (``prometheus_client``) on a registry of our own.

:class:`Metrics` owns its :class:`~prometheus_client.CollectorRegistry` (never the
library's global one); requests are counted by :class:`MeteredAccessLog`, the rest
is observed by its collaborators or read at scrape time.  The HTTP endpoints
that serve them are :mod:`zmirror.metricsendpoint`'s.  Where each number comes
from: docs/design/operations.md.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet.defer import CancelledError
from twisted.logger import Logger

log = Logger()

# Seconds: from small manifests to multi-GiB layers.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _CallbackCollector:
    """A collector whose samples come from a callable at scrape time."""

    def __init__(self, collect: Callable[[], Iterable[Any]]):
        self._collect = collect

    def collect(self):
        try:
            return list(self._collect())
        except Exception:
            log.failure("metrics: a collector failed")
            return []

    def describe(self):
        return []


class Metrics:
    """All ZMirror metrics on one injected (or private) ``CollectorRegistry``."""

    def __init__(self, registry: Optional[CollectorRegistry] = None, *, process: bool = True):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.requests = Counter(
            "zmirror_requests", "Registry and token requests by kind and HTTP status sent",
            ["kind", "status"], registry=r)
        self.response_bytes = Counter(
            "zmirror_response_bytes", "Body bytes actually sent to clients, by request kind",
            ["kind"], registry=r)
        self.request_duration = Histogram(
            "zmirror_request_duration_seconds", "Time from request to the end of the response",
            ["kind"], buckets=REQUEST_BUCKETS, registry=r)
        self.upstream_requests = Counter(
            "zmirror_upstream_requests", "Requests to upstream registries by final status "
            "('error': no response)", ["upstream", "status"], registry=r)
        self.upstream_latency = Histogram(
            "zmirror_upstream_response_seconds",
            "Time until an upstream's final response headers (auth and redirects included)",
            ["upstream"], buckets=UPSTREAM_BUCKETS, registry=r)
        self.upstream_errors = Counter(
            "zmirror_upstream_errors", "Upstream failures counted against its health "
            "(connection, timeout, 5xx, bad content)", ["upstream"], registry=r)
        self.tokens_issued = Counter(
            "zmirror_tokens_issued", "Tokens issued by /token", ["subject", "type"], registry=r)
        self.auth_failures = Counter(
            "zmirror_auth_failures", "Rejected credentials by endpoint and reason",
            ["endpoint", "reason"], registry=r)
        self.policy_refusals = Counter(
            "zmirror_policy_refusals", "Pulls the image policy refused, by reason ('deny_rule': a "
            "deny rule matched; 'no_allow_rule': the namespace has allow rules, none matched)",
            ["reason"], registry=r)
        self.blob_resumes = Counter(
            "zmirror_blob_resumes", "Broken upstream blob bodies resumed with a Range request, by the "
            "upstream that continued it ('failed': none could)", ["upstream", "result"], registry=r)
        self.upstream_blob_bytes = Counter(
            "zmirror_upstream_blob_bytes", "Blob body bytes received from each upstream (resumed "
            "bodies count at every upstream that sent part of them)", ["upstream"], registry=r)
        self.cache_requests = Counter(
            "zmirror_cache_requests", "Pull-through cache lookups by result", ["kind", "result"],
            registry=r)
        self.namespace_requests = Counter(
            "zmirror_namespace_requests", "Registry requests (manifest, blob, tags, denied) by the "
            "namespace of their repository ('other': a namespace no upstream is configured for)",
            ["namespace", "kind"], registry=r)
        # the configured namespaces (watch_namespaces): the label values, so a client's ?ns= cannot
        # grow the label set
        self._namespaces: Callable[[], Iterable[str]] = lambda: ("docker.io",)
        self._gauges: dict[str, Gauge] = {}

    # --- observations ---------------------------------------------------------

    def observe_access(self, rec: Any) -> None:
        """One finished request (an AccessRecord)."""
        kind = rec.kind or "other"
        self.requests.labels(kind, str(int(rec.status or 0))).inc()
        if rec.bytes:
            self.response_bytes.labels(kind).inc(max(0, int(rec.bytes)))
        self.request_duration.labels(kind).observe(max(0.0, float(rec.duration_ms or 0.0)) / 1000.0)
        if rec.cache_hit is not None:
            self.cache_requests.labels(kind, "hit" if rec.cache_hit else "miss").inc()
        ns = getattr(rec, "namespace", "")
        if ns:
            known = ns == "docker.io" or ns in set(self._namespaces())
            self.namespace_requests.labels(ns if known else "other", kind).inc()

    def upstream_response(self, upstream: str, status: Any, seconds: Optional[float]) -> None:
        self.upstream_requests.labels(upstream, str(status)).inc()
        if seconds is not None:
            self.upstream_latency.labels(upstream).observe(max(0.0, seconds))

    def upstream_failed(self, upstream: str) -> None:
        self.upstream_errors.labels(upstream).inc()

    async def time_upstream(self, upstream: str, clock: Any, awaitable: Any) -> Any:
        """Await ``awaitable`` (an upstream request) and record its outcome."""
        started = clock.seconds()
        try:
            resp = await awaitable
        except CancelledError:
            raise  # our client went away: not the upstream's doing
        except Exception:
            self.upstream_response(upstream, "error", None)
            raise
        self.upstream_response(upstream, getattr(resp, "code", "unknown"), clock.seconds() - started)
        return resp

    def token_issued(self, user: bool, refresh: bool = False) -> None:
        subject = "user" if user else "anonymous"
        self.tokens_issued.labels(subject, "access").inc()
        if refresh:
            self.tokens_issued.labels(subject, "refresh").inc()

    def auth_failure(self, endpoint: str, reason: str) -> None:
        self.auth_failures.labels(endpoint, reason).inc()

    def policy_refusal(self, reason: str) -> None:
        self.policy_refusals.labels(reason).inc()

    # --- gauges read at scrape time -------------------------------------------

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value is ``read()`` at scrape time (errors → NaN)."""

        def value():
            try:
                return float(read())
            except Exception:
                return float("nan")

        g = self._gauges.get(name)
        if g is None:
            g = self._gauges[name] = Gauge(name, documentation, registry=self.registry)
        g.set_function(value)

    def watch_accesslog(self, accesslog: Any) -> None:
        self.gauge("zmirror_accesslog_queue_depth", "Access-log records waiting to be written",
                   lambda: getattr(accesslog, "queue_depth", 0))
        self.gauge("zmirror_accesslog_dropped", "Access-log records dropped since start",
                   lambda: getattr(accesslog, "dropped", 0))

    def watch_inflight(self, tracker: Any) -> None:
        self.gauge("zmirror_http_inflight_requests", "HTTP requests being served",
                   lambda: tracker.inflight)

    def watch_cache(self, cache: Any) -> None:
        """Cache size from the cache object (``size_bytes``/``total_size``/``size``,
        an attribute or a method), 0 when there is no cache."""

        def size():
            if cache is None:
                return 0
            for attr in ("size_bytes", "total_size", "size"):
                v = getattr(cache, attr, None)
                if v is not None:
                    return v() if callable(v) else v
            return 0

        self.gauge("zmirror_cache_size_bytes", "Bytes held by the pull-through cache", size)

    def watch_cache_figures(self, node: str, read: Callable[[], dict]) -> None:
        """The cache figures of ``GET /api/cache/stats`` for this node (``read()``:
        :func:`zmirror.cache.view.node_figures`), labelled with its name; the
        cluster's are their sum over the nodes' scrapes."""

        def collect():
            f = read()
            hits = CounterMetricFamily("zmirror_cache_hits", "Blob and manifest requests answered "
                                       "from the cache", labels=["node"])
            misses = CounterMetricFamily("zmirror_cache_misses", "Blob and manifest requests "
                                         "answered from an upstream", labels=["node"])
            ratio = GaugeMetricFamily("zmirror_cache_hit_ratio", "hits / (hits + misses) since "
                                      "start (absent before the first request)", labels=["node"])
            served = CounterMetricFamily("zmirror_cache_blob_bytes", "Blob bytes sent to clients "
                                         "by where they came from", labels=["node", "source"])
            avoided = CounterMetricFamily("zmirror_cache_manifest_gets_avoided", "Manifest requests "
                                          "answered without an upstream GET (fresh hits, HEAD "
                                          "revalidations, stale serves)", labels=["node"])
            hits.add_metric([node], float(f["hits"]))
            misses.add_metric([node], float(f["misses"]))
            if f["hits"] + f["misses"]:
                ratio.add_metric([node], f["hits"] / (f["hits"] + f["misses"]))
            served.add_metric([node, "cache"], float(f["bytes_from_cache"]))
            served.add_metric([node, "upstream"], float(f["bytes_from_upstream"]))
            avoided.add_metric([node], float(f["manifest_gets_avoided"]))
            return [hits, misses, ratio, served, avoided]

        self.registry.register(_CallbackCollector(collect))

    def watch_upstreams(self, pool: Any) -> None:
        """``zmirror_upstream_up`` (1 up/unknown/rate-limited, 0 down or cooling
        down after failures) and consecutive failures, per enabled upstream;
        its rate limit as last reported (``ratelimit-limit`` / ``-remaining``
        / ``w=``: only for upstreams that sent them), whether it is in a
        rate-limit cool-down and when that ends."""

        def collect():
            up = GaugeMetricFamily("zmirror_upstream_up", "Enabled upstream usable (0: down or "
                                   "in cool-down)", labels=["upstream"])
            fails = GaugeMetricFamily("zmirror_upstream_consecutive_failures",
                                      "Failures in a row per enabled upstream", labels=["upstream"])
            limit = GaugeMetricFamily("zmirror_upstream_ratelimit_limit",
                                      "Pulls allowed per window, as the upstream last reported",
                                      labels=["upstream"])
            remaining = GaugeMetricFamily("zmirror_upstream_ratelimit_remaining",
                                          "Pulls left in the window, as the upstream last reported",
                                          labels=["upstream"])
            window = GaugeMetricFamily("zmirror_upstream_ratelimit_window_seconds",
                                       "The upstream's rate-limit window (w=)", labels=["upstream"])
            limited = GaugeMetricFamily("zmirror_upstream_ratelimited",
                                        "1 while the upstream is skipped for pulls (429 or none left)",
                                        labels=["upstream"])
            reset = GaugeMetricFamily("zmirror_upstream_ratelimit_reset_timestamp_seconds",
                                      "When a rate-limited upstream is used for pulls again",
                                      labels=["upstream"])
            health = pool.health.report()
            for u in list(pool.upstreams):
                h = health.get(u.id) or {}
                state = h.get("state", "unknown")
                up.add_metric([u.name], 0.0 if state in ("down", "cooldown") else 1.0)
                fails.add_metric([u.name], float(h.get("consecutive_failures") or 0))
                rl = h.get("rate_limit") or {}
                for family, key in ((limit, "limit"), (remaining, "remaining"), (window, "window")):
                    if isinstance(rl.get(key), int):
                        family.add_metric([u.name], float(rl[key]))
                reset_at = rl.get("reset_at")
                limited.add_metric([u.name], 1.0 if reset_at is not None else 0.0)
                if reset_at is not None:
                    reset.add_metric([u.name], float(reset_at))
            return [up, fails, limit, remaining, window, limited, reset]

        self.registry.register(_CallbackCollector(collect))

    def watch_namespaces(self, pool: Any) -> None:
        """``zmirror_upstream_namespace{upstream, namespace} 1`` per enabled upstream
        (join it with the per-upstream series), and the namespaces that may be
        label values of ``zmirror_namespace_requests``."""
        self._namespaces = lambda: getattr(pool, "namespaces", ()) or ()

        def collect():
            info = GaugeMetricFamily("zmirror_upstream_namespace", "The namespace (registry host) "
                                     "each enabled upstream mirrors", labels=["upstream", "namespace"])
            for u in list(pool.upstreams):
                info.add_metric([u.name, getattr(u, "namespace", "docker.io")], 1.0)
            return [info]

        self.registry.register(_CallbackCollector(collect))

    def watch_cluster(self, bus: Any, lockout_sync: Any = None, sharing: Any = None,
                      clock: Any = None) -> None:
        """The ``zmirror_cluster_*`` series (PostgreSQL: the caller registers them only
        there): the state of ``bus`` (a :class:`~zmirror.db.listen.PostgresBus`, read
        through its counters), the queue and counters of ``lockout_sync`` and the
        publications of ``sharing`` (each left out when None).  ``clock``: for the
        ages (default: the bus's)."""
        clock = clock if clock is not None else getattr(bus, "clock", None)

        def collect():
            out = _bus_families(bus, clock.seconds())
            if lockout_sync is not None:
                out += _lockout_families(lockout_sync)
            if sharing is not None:
                out += _sharing_families(sharing)
            return out

        self.registry.register(_CallbackCollector(collect))

    # --- exposition ---------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _num(obj: Any, attr: str) -> float:
    return float(getattr(obj, attr, 0) or 0)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _bus_families(bus: Any, now: float) -> list:
    """The cluster bus's state and counters at ``now``."""
    connected = bool(getattr(bus, "connected", False))
    since = getattr(bus, "disconnected_since", None)
    out = [
        _gauge("zmirror_cluster_bus_connected", "1 while the cluster bus listens "
               "(LISTEN/NOTIFY connection up)", 1.0 if connected else 0.0),
        _gauge("zmirror_cluster_bus_disconnected_seconds", "Seconds the cluster bus has not "
               "been listening (0 while it is; from the start when it never was)",
               0.0 if connected or since is None else max(0.0, now - since)),
    ]
    at = getattr(bus, "connected_at", None)
    if at is not None:
        out.append(_gauge("zmirror_cluster_bus_last_connect_age_seconds",
                          "Seconds since the cluster bus last (re)connected", max(0.0, now - at)))
    out += [
        _counter("zmirror_cluster_bus_reconnects", "Successful reconnects of the cluster bus "
                 "(the first connect not counted)", max(0.0, _num(bus, "connects") - 1)),
        _counter("zmirror_cluster_bus_connect_failures", "Failed connects and lost "
                 "connections of the cluster bus", _num(bus, "failures")),
        _counter("zmirror_cluster_bus_events_published", "Events this node sent to the "
                 "others (the database took the NOTIFY)", _num(bus, "published")),
        _counter("zmirror_cluster_bus_publish_errors", "Events the database refused to send "
                 "(NOTIFY failed)", _num(bus, "publish_errors")),
        _counter("zmirror_cluster_bus_events_received", "Events from other nodes delivered "
                 "here", _num(bus, "received")),
        _counter("zmirror_cluster_bus_events_dropped", "Events dropped as invalid (too big "
                 "or not JSON to send, unreadable when received)", _num(bus, "dropped")),
    ]
    changes = CounterMetricFamily("zmirror_cluster_bus_table_changes", "Deliveries of "
                                  "shared-table changes (users, whitelists, registries)",
                                  labels=["table"])
    seen = dict(getattr(bus, "table_changes", {}) or {})
    for table in sorted(set(getattr(bus, "tables", ())) | set(seen)):
        changes.add_metric([table], float(seen.get(table, 0)))
    out.append(changes)
    return out


def _lockout_families(sync: Any) -> list:
    """The shared lockout's write queue and counters."""
    return [
        _gauge("zmirror_cluster_lockout_queue_depth", "Failed logins waiting to be "
               "written to login_failures", _num(sync, "queue_depth")),
        _counter("zmirror_cluster_lockout_written", "Failed logins written to "
                 "login_failures", _num(sync, "written")),
        _counter("zmirror_cluster_lockout_dropped", "Failed logins not written to "
                 "login_failures (queue full, write failed, stopping)", _num(sync, "dropped")),
        _counter("zmirror_cluster_lockout_ignored", "Malformed lockout events from the "
                 "bus, ignored", _num(sync, "ignored")),
    ]


def _sharing_families(sharing: Any) -> list:
    """The shared upstream health's publications."""
    return [
        _counter("zmirror_cluster_upstream_state_published", "Upstream health snapshots "
                 "this node sent to the others (bus and upstream_state)", _num(sharing, "sent")),
        _counter("zmirror_cluster_upstream_state_applied", "Other nodes' upstream health "
                 "snapshots that changed something here", _num(sharing, "applied")),
        _counter("zmirror_cluster_upstream_state_store_failures", "Failed writes of "
                 "upstream_state", _num(sharing, "store_failures")),
    ]


class MeteredAccessLog:
    """An access log that counts every record, then hands it to the real one.

    Everything else (``queue_depth``, ``flush``, ``stop`` ...) is the wrapped
    log's.
    """

    def __init__(self, inner: Any, metrics: Metrics):
        self.inner = inner
        self.metrics = metrics

    def record(self, rec: Any) -> None:
        try:
            self.metrics.observe_access(rec)
        except Exception:
            log.failure("metrics: counting an access record failed")
        if self.inner is not None:
            self.inner.record(rec)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


__all__ = ["Metrics", "MeteredAccessLog"]
