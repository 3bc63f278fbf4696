"""A running engine's /metrics: promtool-clean, and every series the Grafana dashboard queries is one it serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtproxy.protocol.secret import Secret
from mtproxy.stats.counters import Counters
from mtproxy.stats.http import StatsServer

from .conftest import ProxyFactory, served_once

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "mtproxy-dashboard.json"
METRIC = re.compile(r"\bmtproxy_[a-z0-9_]+\b")
# Grafana's variables, replaced by what Grafana would put there, so promtool can parse the queries
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "6h", "$instance": ".*", "$secret": ".*"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; scripts/install-test-deps installs it)")
    return found


def exposed_names(body: str) -> set[str]:
    """Every series name a query could select: each family's sample names (counters end in _total)."""
    names = {s.name for f in text_string_to_metric_families(body) for s in f.samples}
    names |= {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}  # empty families too
    return names


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs


def scrape(start_proxy: ProxyFactory, secret: Secret, tmp_path: Path) -> str:
    proxy = served_once(start_proxy, secret, tmp_path)
    url = f"http://127.0.0.1:{proxy.stats_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        body: str = response.read().decode()
    return body


def test_engine_metrics_pass_promtool(start_proxy: ProxyFactory, secret: Secret, tmp_path: Path) -> None:
    body = scrape(start_proxy, secret, tmp_path)
    traffic = {(s.labels["secret"], s.labels["direction"]): s.value
               for f in text_string_to_metric_families(body) if f.name == "mtproxy_secret_bytes" for s in f.samples}
    assert traffic == {("s-42", "client_to_dc"): 1000, ("s-42", "dc_to_client"): 1000}
    assert secret.key.hex() not in body
    done = subprocess.run([promtool(), "check", "metrics"], input=body.encode(), capture_output=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), \
        (done.stdout + done.stderr).decode()


def test_dashboard_queries_only_series_the_engine_serves(start_proxy: ProxyFactory, secret: Secret,
                                                         tmp_path: Path) -> None:
    exposed = exposed_names(scrape(start_proxy, secret, tmp_path))
    used: set[str] = set()
    for expr in dashboard_queries():
        found = set(METRIC.findall(expr))
        assert found, f"a dashboard query uses no mtproxy series: {expr}"
        used |= found
    assert used - exposed == set(), f"the dashboard queries series the engine does not serve: {used - exposed}"
    # the panels the issue asks for are there: overall traffic, sessions, failures, per-secret traffic,
    # quota use, refusals, top secrets
    for needed in ("mtproxy_bytes_total", "mtproxy_connections_active", "mtproxy_handshake_failures_total",
                   "mtproxy_secret_bytes_total", "mtproxy_secret_quota_used_bytes",
                   "mtproxy_secret_quota_limit_bytes", "mtproxy_session_refusals_total",
                   "mtproxy_secret_session_refusals_total"):
        assert needed in used, needed
    assert any(e.startswith("topk(") for e in dashboard_queries())


def test_dashboard_is_valid_grafana_json_and_promql(tmp_path: Path) -> None:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] and doc["title"]
    for panel in doc["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"  # no data source of ours baked in
    # promtool parses PromQL when checking rules: one recording rule per query
    rules = []
    for i, expr in enumerate(dashboard_queries()):
        if expr.startswith("label_values("):
            continue
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append(f"      - record: dashboard:query{i}\n        expr: {json.dumps(expr)}\n")
    path = tmp_path / "rules.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, timeout=30)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_stats_server_applies_the_series_cap() -> None:
    counters = Counters(started_at=time.time())
    for i in range(50):
        counters.for_secret(f"s{i:02}").bytes_out = i
    server = StatsServer("127.0.0.1", 0, counters.snapshot, allow_remote=False, max_secrets=5)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            body = response.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/stats", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.close()
    named = {s.labels["secret"] for f in text_string_to_metric_families(body) if f.name == "mtproxy_secret_bytes"
             for s in f.samples}
    assert named == {"s45", "s46", "s47", "s48", "s49", "_other"}
    assert text.count("_bytes_out\t") == 50  # /stats keeps every secret
    with pytest.raises(ValueError):
        StatsServer("127.0.0.1", 0, counters.snapshot, allow_remote=False, max_secrets=-1)
