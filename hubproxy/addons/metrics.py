"""Prometheus metrics: the proxy's counters, an observing addon, and ``/_hub/metrics`` text.

Families (Prometheus text format 0.0.4):

- ``hub_environments{state}``: environments by state (every state listed, zeros included);
- ``hub_spawns_total{outcome}``, ``hub_spawn_seconds``, ``hub_restores_total{outcome}``,
  ``hub_restore_seconds``, ``hub_checkpoints_total{outcome}``, ``hub_checkpoint_seconds``,
  ``hub_checkpoint_failures_total``, ``hub_stops_total{state}``: from the control plane
  (``hubcontrol.stats.Lifecycle``);
- ``hub_proxy_requests_total{prefix,code}``: requests proxied to environments, by route prefix
  and status class (``2xx`` ... or ``error`` when the environment did not answer);
- ``hub_websocket_connections_total{prefix}`` and ``hub_websockets_open{prefix}``;
- ``hub_logins_total{outcome}``: OAuth callbacks by outcome (``success``, ``denied``,
  ``invalid``, ``provider_error``, ``error``);
- ``hub_websocket_upgrades_waiting`` and ``hub_websocket_upgrades_queued_total``: upgrades in
  line for a slot of the hub's port now, and all that ever had to wait (a reconnect storm);
- ``hub_health_probes_answered_total``: plain ``/_hub/health`` probes the hub's port answered
  itself (``hubproxy.server.admission``), in every worker;
- ``hub_stats_age_seconds``: how old the sampled disk/docker numbers are.

No labels carry user names (cardinality, and the metrics endpoint is readable by local probes).
The primitives are hand-written (``hubcontrol.stats``): a few dozen lines, and every hub has its
own registry instead of prometheus_client's process-global one, which tests would share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from mitmproxy import http

from hubcontrol import STATES, Counter, Gauge, Histogram
from hubproxy.addons.statusapi import live_state
from hubproxy.context import ENDPOINT, ROUTED, SCHEME, TARGET, HubContext

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_COUNTED = "hub.ws_counted"


class ProxyMetrics:
    """The request path's own counters, shared by the addons of one proxy."""

    def __init__(self) -> None:
        self.requests = Counter(
            "hub_proxy_requests_total",
            "Requests proxied to user environments, by route prefix and status class",
            ("prefix", "code"),
        )
        self.websockets = Counter(
            "hub_websocket_connections_total",
            "WebSocket connections proxied to user environments, by route prefix",
            ("prefix",),
        )
        self.websockets_open = Gauge(
            "hub_websockets_open", "WebSocket connections open now, by route prefix", ("prefix",)
        )
        self.logins = Counter("hub_logins_total", "OAuth login callbacks, by outcome", ("outcome",))
        # the hub port's admission (hubproxy/server/admission.py): a reconnect storm, as it goes
        self.upgrades_waiting = Gauge(
            "hub_websocket_upgrades_waiting",
            "WebSocket upgrades waiting now for one of the hub port's slots",
        )
        self.upgrades_queued = Counter(
            "hub_websocket_upgrades_queued_total",
            "WebSocket upgrades that had to wait for one of the hub port's slots",
        )
        self.probes_answered = Counter(
            "hub_health_probes_answered_total",
            "Plain /_hub/health probes the hub's port answered itself, without mitmproxy",
        )
        # the scheme and port browsers reach the hub on, for links in token-authenticated answers
        self.last_origin: tuple[str, int | None] | None = None
        # worker 0 of `hub start --workers N`: merges the other workers' samples in
        # (hubproxy/workers/workerpool.py)
        self.fleet = None

    def families(self) -> list:
        own = self.own_families()
        return own if self.fleet is None else self.fleet.families(own)

    def own_families(self) -> list:
        """This process's own families (what a worker reports to worker 0)."""
        return [
            self.requests,
            self.websockets,
            self.websockets_open,
            self.logins,
            self.upgrades_waiting,
            self.upgrades_queued,
            self.probes_answered,
        ]


def login_outcome(status: int) -> str:
    """An OAuth callback's outcome from the status the hub answered it with."""
    if status in (301, 302, 303, 307):
        return "success"
    if status == 403:
        return "denied"  # declined at the provider, or not in HUB_ALLOWED_GROUPS
    if status == 400:
        return "invalid"  # bad or expired state, no code
    if status in (502, 503, 504):
        return "provider_error"
    return "error"


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "error"


# -- text format ---------------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Iterable[str], values: Iterable[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def render_family(family: Counter | Gauge | Histogram) -> list[str]:
    """Prometheus text lines of one Counter, Gauge or Histogram."""
    if isinstance(family, Histogram):
        kind = "histogram"
    elif isinstance(family, Gauge):
        kind = "gauge"
    else:
        kind = "counter"
    lines = [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {kind}"]
    if isinstance(family, Histogram):
        for values, buckets, total, count in family.samples():
            for le, n in [*buckets, (math.inf, count)]:
                bound = 'le="' + _num(le) + '"'
                lines.append(f"{family.name}_bucket{_labels(family.labels, values, bound)} {n}")
            lines.append(f"{family.name}_sum{_labels(family.labels, values)} {_num(total)}")
            lines.append(f"{family.name}_count{_labels(family.labels, values)} {count}")
    else:
        for values, value in family.samples():
            lines.append(f"{family.name}{_labels(family.labels, values)} {_num(value)}")
    return lines


def render_gauge(
    name: str,
    help: str,
    labels: tuple[str, ...],
    samples: Iterable[tuple[tuple[str, ...], float]],
) -> list[str]:
    lines = [f"# HELP {name} {help}", f"# TYPE {name} gauge"]
    for values, value in samples:
        lines.append(f"{name}{_labels(labels, values)} {_num(value)}")
    return lines


def environments_by_state(states: Iterable[str]) -> list[tuple[tuple[str], int]]:
    counts = dict.fromkeys(STATES, 0)
    for s in states:
        counts[s] = counts.get(s, 0) + 1
    return [((s,), n) for s, n in counts.items()]


def metrics_text(context: HubContext, metrics: ProxyMetrics) -> str:
    control = context.control
    lines: list[str] = []
    view = control.status_view()
    states = [
        live_state(row.state, control.progress(row.user), view.refreshed_at) for row in view.rows
    ]
    lines += render_gauge(
        "hub_environments", "Environments by state", ("state",), environments_by_state(states)
    )
    for family in control.metric_families():
        lines += render_family(family)
    sampled = [s.sampled_at for s in view.stats.values() if s.sampled_at]
    if sampled:
        age = max(0.0, context.clock() - min(sampled))
        lines += render_gauge(
            "hub_stats_age_seconds",
            "Age of the oldest per-user disk/docker sample",
            (),
            [((), round(age, 3))],
        )
    for family in metrics.families():
        lines += render_family(family)
    return "\n".join(lines) + "\n"


def render_metrics(context: HubContext, metrics: ProxyMetrics) -> http.Response:
    return http.Response.make(
        200,
        metrics_text(context, metrics).encode(),
        {"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
    )


# -- the observing addon ---------------------------------------------------------------------------


class Metrics:
    """Counts what the request path did; never changes a flow."""

    def __init__(self, context: HubContext, metrics: ProxyMetrics) -> None:
        self.context = context
        self.metrics = metrics

    def response(self, flow: http.HTTPFlow) -> None:
        target = flow.metadata.get(TARGET)
        if target is None or flow.response is None:
            return
        if SCHEME in flow.metadata:
            port = flow.request.host_header or ""
            _, sep, p = port.rpartition(":")
            self.metrics.last_origin = (
                flow.metadata[SCHEME],
                int(p) if sep and p.isdigit() else None,
            )
        if flow.metadata.get(ENDPOINT) == "oauth/callback":
            self.metrics.logins.inc(login_outcome(flow.response.status_code))
        elif flow.metadata.get(ROUTED):
            self.metrics.requests.inc(target.prefix or "", status_class(flow.response.status_code))

    def error(self, flow: http.HTTPFlow) -> None:
        target = flow.metadata.get(TARGET)
        if target is not None and flow.metadata.get(ROUTED) and flow.response is None:
            self.metrics.requests.inc(target.prefix or "", "error")

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        target = flow.metadata.get(TARGET)
        if target is not None and flow.metadata.get(ROUTED):
            self.metrics.websockets.inc(target.prefix or "")
            self.metrics.websockets_open.inc(target.prefix or "")
            flow.metadata[_COUNTED] = target.prefix or ""

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        prefix = flow.metadata.pop(_COUNTED, None)
        if prefix is not None:
            self.metrics.websockets_open.dec(prefix)
