"""Render a merged stats snapshot as `/stats` (key<TAB>value lines) and `/metrics` (Prometheus text)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry


def render_stats(snap: dict[str, Any], now: float) -> str:
    """The official proxy's `/stats` shape: one `key\tvalue` per line, stable key names."""
    lines = [
        ("uptime", int(now - snap["started_at"])),
        ("workers", snap["workers"]),
        ("active_connections", snap["active"]),
        ("total_connections", snap["total"]),
        ("handshakes_ok", snap["handshakes_ok"]),
        ("bytes_client_to_dc", snap["bytes_in"]),
        ("bytes_dc_to_client", snap["bytes_out"]),
        ("masked_connections", snap["masked"]),
        ("mask_failed", snap["mask_failed"]),
        ("upstream_failed", snap["upstream_failed"]),
        ("refused_by_limit", snap["refused_limit"]),
        ("unauthenticated_connections", snap.get("unauthenticated", 0)),
        ("refused_unauthenticated", snap.get("refused_unauthenticated", 0)),
        ("refused_unauthenticated_per_ip", snap.get("refused_unauthenticated_ip", 0)),
        ("halfclose_released", snap.get("halfclose_released", 0)),
        ("refused_out_of_fds", snap.get("out_of_fds", 0)),
        ("secrets_loaded", snap["secrets_loaded"]),
        ("reloads_ok", snap["reloads_ok"]),
        ("reloads_failed", snap["reloads_failed"]),
        ("fake_cert_size", snap["cert_size"]),
    ]
    lines += [(f"handshake_failures_{k}", v) for k, v in sorted(snap["rejects"].items())]
    lines += [(f"session_refusals_{k}", v) for k, v in sorted(snap.get("refusals", {}).items())]
    lines += [(f"mode_{k}_connections", v) for k, v in sorted(snap["modes"].items())]
    for sid, fig in sorted(snap["secrets"].items()):
        for k in ("active", "total", "bytes_in", "bytes_out"):
            lines.append((f"secret_{sid}_{k}", fig[k]))
    return "".join(f"{k}\t{v}\n" for k, v in lines)


class _SnapshotCollector(Collector):
    def __init__(self, snap: dict[str, Any], now: float) -> None:
        self._snap = snap
        self._now = now

    def collect(self) -> Iterator[Metric]:
        s = self._snap
        yield GaugeMetricFamily("mtproxy_uptime_seconds", "Seconds since start", value=self._now - s["started_at"])
        yield GaugeMetricFamily("mtproxy_workers", "Worker processes reporting", value=s["workers"])
        yield GaugeMetricFamily("mtproxy_connections_active", "Client connections open", value=s["active"])
        yield CounterMetricFamily("mtproxy_connections", "Client connections accepted", value=s["total"])
        yield CounterMetricFamily("mtproxy_handshakes_ok", "Authenticated handshakes", value=s["handshakes_ok"])
        b = CounterMetricFamily("mtproxy_bytes", "Bytes relayed", labels=["direction"])
        b.add_metric(["client_to_dc"], s["bytes_in"])
        b.add_metric(["dc_to_client"], s["bytes_out"])
        yield b
        yield CounterMetricFamily("mtproxy_masked", "Connections relayed to the mask site", value=s["masked"])
        yield CounterMetricFamily("mtproxy_mask_failed", "Mask site unreachable", value=s["mask_failed"])
        yield CounterMetricFamily("mtproxy_upstream_failed", "DC connections failed", value=s["upstream_failed"])
        yield CounterMetricFamily("mtproxy_refused_by_limit", "Connections refused by a limit",
                                  value=s["refused_limit"])
        yield GaugeMetricFamily("mtproxy_connections_unauthenticated",
                                "Connections in the handshake or handed to the mask", value=s.get("unauthenticated", 0))
        ru = CounterMetricFamily("mtproxy_refused_unauthenticated", "Unauthenticated connections refused by a cap",
                                 labels=["cap"])
        ru.add_metric(["total"], s.get("refused_unauthenticated", 0))
        ru.add_metric(["per_ip"], s.get("refused_unauthenticated_ip", 0))
        yield ru
        yield CounterMetricFamily("mtproxy_halfclose_released", "Half-closed connections closed by the timeout",
                                  value=s.get("halfclose_released", 0))
        yield CounterMetricFamily("mtproxy_out_of_fds", "Connections refused or dropped for lack of descriptors",
                                  value=s.get("out_of_fds", 0))
        r = CounterMetricFamily("mtproxy_handshake_failures", "Rejected handshakes", labels=["reason"])
        for k, v in sorted(s["rejects"].items()):
            r.add_metric([k], v)
        yield r
        rf = CounterMetricFamily("mtproxy_session_refusals", "Sessions refused or closed by a secret's limits",
                                 labels=["reason"])
        for k, v in sorted(s.get("refusals", {}).items()):
            rf.add_metric([k], v)
        yield rf
        m = CounterMetricFamily("mtproxy_mode_connections", "Authenticated sessions by mode", labels=["mode"])
        for k, v in sorted(s["modes"].items()):
            m.add_metric([k], v)
        yield m
        sa = GaugeMetricFamily("mtproxy_secret_connections_active", "Open sessions per secret", labels=["id"])
        st = CounterMetricFamily("mtproxy_secret_connections", "Sessions per secret", labels=["id"])
        sb = CounterMetricFamily("mtproxy_secret_bytes", "Bytes per secret", labels=["id", "direction"])
        for sid, fig in sorted(s["secrets"].items()):
            sa.add_metric([sid], fig["active"])
            st.add_metric([sid], fig["total"])
            sb.add_metric([sid, "client_to_dc"], fig["bytes_in"])
            sb.add_metric([sid, "dc_to_client"], fig["bytes_out"])
        yield sa
        yield st
        yield sb
        yield GaugeMetricFamily("mtproxy_secrets_loaded", "Secrets in the live set", value=s["secrets_loaded"])
        rl = CounterMetricFamily("mtproxy_reloads", "Secrets reloads", labels=["result"])
        rl.add_metric(["ok"], s["reloads_ok"])
        rl.add_metric(["failed"], s["reloads_failed"])
        yield rl
        yield GaugeMetricFamily("mtproxy_fake_cert_size_bytes", "Fake certificate record size",
                                value=s["cert_size"])


def render_metrics(snap: dict[str, Any], now: float) -> bytes:
    """Prometheus text exposition of the snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap, now))
    return generate_latest(registry)
