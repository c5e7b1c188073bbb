"""/_hub/metrics: the Prometheus text format (pure), the observing addon on mitmproxy test flows,
and the whole endpoint through the real proxy and Hub (tests/support/statussite.py)."""

from __future__ import annotations

import re

import httpx
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from hubcontrol.hub import STATES
from hubcontrol.stats import Counter, Gauge, Histogram
from hubproxy.addons.metrics import (
    Metrics,
    ProxyMetrics,
    environments_by_state,
    login_outcome,
    render_family,
    status_class,
)
from hubproxy.context import ENDPOINT, ROUTED, SCHEME, TARGET
from hubproxy.hosts import Target
from tests.support.statussite import seeded_site

# one sample line of the text format: name{labels} value
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? \S+$'
)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (302, "success"),
        (403, "denied"),
        (400, "invalid"),
        (502, "provider_error"),
        (503, "provider_error"),
        (500, "error"),
        (200, "error"),
    ],
)
def test_login_outcome(status, outcome):
    assert login_outcome(status) == outcome


@pytest.mark.parametrize(
    ("status", "cls"), [(200, "2xx"), (101, "1xx"), (404, "4xx"), (None, "error")]
)
def test_status_class(status, cls):
    assert status_class(status) == cls


def test_counter_text_escapes_label_values():
    c = Counter("hub_x_total", "Things", ("prefix",))
    c.inc('a"b\\c\nd')
    lines = render_family(c)
    assert lines[:2] == ["# HELP hub_x_total Things", "# TYPE hub_x_total counter"]
    assert lines[2] == 'hub_x_total{prefix="a\\"b\\\\c\\nd"} 1'
    assert SAMPLE.match(lines[2])


def test_gauge_and_histogram_text():
    g = Gauge("hub_open", "Open", ("prefix",))
    g.inc("term")
    assert render_family(g)[1] == "# TYPE hub_open gauge"
    h = Histogram("hub_s", "Seconds", buckets=(1.0, 2.5))
    h.observe(0.5)
    h.observe(3.0)
    lines = render_family(h)
    assert lines[1] == "# TYPE hub_s histogram"
    assert lines[2:] == [
        'hub_s_bucket{le="1"} 1',
        'hub_s_bucket{le="2.5"} 1',
        'hub_s_bucket{le="+Inf"} 2',
        "hub_s_sum 3.5",
        "hub_s_count 2",
    ]


def test_every_state_is_listed():
    samples = dict(environments_by_state(["running", "running", "failed"]))
    assert set(k[0] for k in samples) == set(STATES)
    assert samples[("running",)] == 2 and samples[("stopped",)] == 0


def _flow(prefix="term", routed=True, status=200, endpoint=None):
    f = tflow.tflow(resp=True)
    f.response.status_code = status
    f.metadata[TARGET] = Target("route", f"{prefix}.example.com", prefix)
    f.metadata[SCHEME] = "https"
    if routed:
        f.metadata[ROUTED] = True
    if endpoint:
        f.metadata[ENDPOINT] = endpoint
    return f


def test_observer_counts_requests_websockets_and_logins():
    m = ProxyMetrics()
    addon = Metrics(None, m)
    addon.response(_flow("term", status=200))
    addon.response(_flow("code", status=502))
    addon.response(_flow("term", routed=False, status=401))  # refused by the hub: not proxied
    addon.response(_flow(routed=False, status=302, endpoint="oauth/callback"))
    addon.response(_flow(routed=False, status=403, endpoint="oauth/callback"))
    failed = _flow("term")
    failed.response = None
    addon.error(failed)
    assert m.requests.samples() == [
        (("code", "5xx"), 1.0),
        (("term", "2xx"), 1.0),
        (("term", "error"), 1.0),
    ]
    assert m.logins.samples() == [(("denied",), 1.0), (("success",), 1.0)]
    ws = tflow.twebsocketflow()
    ws.metadata.update({TARGET: Target("route", "term.example.com", "term"), ROUTED: True})
    addon.websocket_start(ws)
    assert m.websockets.get("term") == 1 and m.websockets_open.get("term") == 1
    addon.websocket_end(ws)
    addon.websocket_end(ws)  # counted once
    assert m.websockets_open.get("term") == 0
    unrouted = tflow.twebsocketflow()
    addon.websocket_start(unrouted)
    addon.websocket_end(unrouted)
    assert m.websockets.get("term") == 1


def test_observer_remembers_the_browser_origin():
    m = ProxyMetrics()
    f = _flow()
    f.request.headers["host"] = "term.example.com:8443"
    Metrics(None, m).response(f)
    assert m.last_origin == ("https", 8443)


def test_metrics_endpoint_through_the_proxy(tmp_path):
    with seeded_site(tmp_path) as (proxy, hub, _):
        with httpx.Client(
            base_url=f"http://127.0.0.1:{proxy.port}",
            headers={"Host": f"127.0.0.1:{proxy.port}"},
        ) as c:
            r = c.get("/_hub/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = r.text.splitlines()
    types = {}
    for line in lines:
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif not line.startswith("#"):
            assert SAMPLE.match(line), line
    assert types["hub_environments"] == "gauge"
    assert types["hub_spawn_seconds"] == "histogram"
    assert types["hub_logins_total"] == "counter"
    assert 'hub_environments{state="running"} 1' in lines
    assert 'hub_environments{state="checkpointed"} 1' in lines
    assert 'hub_environments{state="stopped"} 1' in lines
    # the hub port's admission is counted from the start: nothing waits, nothing has waited
    assert types["hub_websocket_upgrades_waiting"] == "gauge"
    assert types["hub_websocket_upgrades_queued_total"] == "counter"
    assert "hub_websocket_upgrades_waiting 0" in lines
    assert "hub_websocket_upgrades_queued_total 0" in lines
    assert types["hub_health_probes_answered_total"] == "counter"
    assert not any("alice" in line for line in lines)  # no user names in labels


def test_response_set_by_an_addon_is_not_counted_as_proxied():
    m = ProxyMetrics()
    f = _flow(routed=False)
    f.response = http.Response.make(503)
    Metrics(None, m).response(f)
    assert m.requests.samples() == []
