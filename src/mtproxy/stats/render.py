"""Render a merged stats snapshot as `/stats` (key<TAB>value lines) and `/metrics` (Prometheus text)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from mtproxy.defaults import DEFAULT_METRICS_MAX_SECRETS

from .snapshot import timestamp

OTHER = "_other"


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
        ("secret_scans", snap.get("scans", 0)),
        ("secret_scans_waiting", snap.get("scans_waiting", 0)),
        ("secrets_loaded", snap["secrets_loaded"]),
        ("reloads_ok", snap["reloads_ok"]),
        ("reloads_failed", snap["reloads_failed"]),
        ("fake_cert_size", snap["cert_size"]),
    ]
    lines += [(f"handshake_failures_{k}", v) for k, v in sorted(snap["rejects"].items())]
    lines += [(f"session_refusals_{k}", v) for k, v in sorted(snap.get("refusals", {}).items())]
    lines += [(f"mode_{k}_connections", v) for k, v in sorted(snap["modes"].items())]
    for dc, counts in sorted(snap.get("via_upstream", {}).items()):
        lines += [(f"upstream_dc_{dc}_ok", counts["ok"]), (f"upstream_dc_{dc}_failed", counts["failed"])]
    for sid, fig in sorted(snap["secrets"].items()):
        for k in ("active", "total", "bytes_in", "bytes_out"):
            lines.append((f"secret_{sid}_{k}", fig[k]))
    middle = snap.get("middle")
    if middle:  # the relay path's counters under the official proxy's own key names (runtime/relays.py)
        lines += sorted(middle["counters"].items())
        lines.append(("middle_proxy_dcs_down", ",".join(map(str, middle["dcs_down"])) or "-"))
        for relay in middle["relays"]:
            lines.append((f"relay_dc_{relay['dc']}_{relay['relay']}",
                          f"{relay['state']} ready_links={relay['ready_links']} links={relay['links']}"
                          f" ({relay['reason']})"))
    return "".join(f"{k}\t{v}\n" for k, v in lines)


class _SnapshotCollector(Collector):
    def __init__(self, snap: dict[str, Any], now: float, max_secrets: int) -> None:
        self._snap = snap
        self._now = now
        self._max_secrets = max_secrets

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
        yield CounterMetricFamily("mtproxy_scans", "Handshakes no hint identified that tried every secret",
                                  value=s.get("scans", 0))
        yield GaugeMetricFamily("mtproxy_scans_waiting", "Handshakes waiting for the scan budget",
                                value=s.get("scans_waiting", 0))
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
        up = CounterMetricFamily("mtproxy_upstream_dc_dials", "DC dials through the SOCKS5 upstream",
                                 labels=["dc", "result"])
        for dc, counts in sorted(s.get("via_upstream", {}).items()):
            up.add_metric([dc, "ok"], counts["ok"])
            up.add_metric([dc, "failed"], counts["failed"])
        yield up
        yield from _per_secret(s.get("secrets", {}), self._max_secrets)
        yield GaugeMetricFamily("mtproxy_secrets_loaded", "Secrets in the live set", value=s["secrets_loaded"])
        rl = CounterMetricFamily("mtproxy_reloads", "Secrets reloads", labels=["result"])
        rl.add_metric(["ok"], s["reloads_ok"])
        rl.add_metric(["failed"], s["reloads_failed"])
        yield rl
        yield GaugeMetricFamily("mtproxy_fake_cert_size_bytes", "Fake certificate record size",
                                value=s["cert_size"])
        middle = s.get("middle")
        if middle:
            yield from _middle(middle)


# relay counters that are gauges (runtime/relays.py RelayCounters); the rest only grow
_MIDDLE_GAUGES = frozenset({"ext_connections", "total_ready_targets", "total_declared_targets", "relay_links_open",
                            "relay_links_ready", "relay_dcs_down"})


def _middle(middle: Mapping[str, Any]) -> Iterator[Metric]:
    for name, value in sorted(middle["counters"].items()):
        if name in _MIDDLE_GAUGES:
            yield GaugeMetricFamily(f"mtproxy_middle_{name}", f"Middle proxy: {name} now", value=value)
        else:
            yield CounterMetricFamily(f"mtproxy_middle_{name}", f"Middle proxy: {name}", value=value)
    state = GaugeMetricFamily("mtproxy_middle_relay_ready_links", "Ready links to each middle-proxy relay",
                              labels=["dc", "relay", "state"])
    for relay in middle["relays"]:
        state.add_metric([str(relay["dc"]), str(relay["relay"]), str(relay["state"])], relay["ready_links"])
    yield state
    down = GaugeMetricFamily("mtproxy_middle_dc_down", "1 while every relay of the DC is down (clients go direct)",
                             labels=["dc"])
    for relay_dc in sorted({int(relay["dc"]) for relay in middle["relays"]}):
        down.add_metric([str(relay_dc)], 1 if relay_dc in middle["dcs_down"] else 0)
    yield down


def render_metrics(snap: dict[str, Any], now: float, max_secrets: int = DEFAULT_METRICS_MAX_SECRETS) -> bytes:
    """Prometheus text exposition of the snapshot, with at most `max_secrets` secrets named one by one."""
    if max_secrets < 0:
        raise ValueError("max_secrets must be 0 or more")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap, now, max_secrets))
    return generate_latest(registry)


def series_names(secrets: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The `secret` label value of each secret id: its label when set, else its id.

    Labels are unique in the store, ids too, but a label may equal another secret's id (or `_other`): that
    secret is then named by its id, so no two secrets ever share a series. Decided over every secret in the
    snapshot, not only the busiest, so a name does not change when a secret enters or leaves the top.
    """
    ids = set(secrets)
    names: dict[str, str] = {}
    taken = {OTHER}
    for sid in sorted(secrets):
        label = str(secrets[sid].get("label") or "")
        name = label if label and label not in ids and label not in taken else sid
        while name in taken:  # only an id spelled `_other`, or a label spelled like a fallback below
            name = f"{name}#"
        taken.add(name)
        names[sid] = name
    return names


def busiest(secrets: Mapping[str, Mapping[str, Any]], limit: int) -> tuple[list[str], list[str]]:
    """Split secret ids into the `limit` busiest by bytes both ways (ties by id) and the rest."""
    ranked = sorted(secrets, key=lambda sid: (-(int(secrets[sid].get("bytes_in", 0))
                                                + int(secrets[sid].get("bytes_out", 0))), sid))
    return ranked[:limit], ranked[limit:]


def _per_secret(secrets: Mapping[str, Mapping[str, Any]], limit: int) -> Iterator[Metric]:
    names = series_names(secrets)
    shown, rest = busiest(secrets, limit)
    info = GaugeMetricFamily("mtproxy_secret_info", "Maps a secret's series name to its store id (value 1)",
                             labels=["secret", "id"])
    active = GaugeMetricFamily("mtproxy_secret_connections_active", "Open sessions per secret", labels=["secret"])
    total = CounterMetricFamily("mtproxy_secret_connections", "Sessions per secret", labels=["secret"])
    traffic = CounterMetricFamily("mtproxy_secret_bytes", "Bytes per secret", labels=["secret", "direction"])
    refused = CounterMetricFamily("mtproxy_secret_session_refusals",
                                  "Sessions refused or closed by the secret's limits", labels=["secret", "reason"])
    gauges = {key: GaugeMetricFamily(name, text, labels=["secret"]) for key, (name, text) in _GAUGES.items()}
    for sid in sorted(shown, key=names.__getitem__):
        fig, name = secrets[sid], names[sid]
        info.add_metric([name, sid], 1)
        active.add_metric([name], int(fig.get("active", 0)))
        total.add_metric([name], int(fig.get("total", 0)))
        traffic.add_metric([name, "client_to_dc"], int(fig.get("bytes_in", 0)))
        traffic.add_metric([name, "dc_to_client"], int(fig.get("bytes_out", 0)))
        for reason, n in sorted(dict(fig.get("refusals") or {}).items()):
            refused.add_metric([name, reason], int(n))
        for key, value in _gauge_values(fig).items():
            gauges[key].add_metric([name], value)
    if rest:  # counters of the rest summed, so totals over `secret` still add up; their limits have no sum
        other: dict[str, int] = {}
        for sid in rest:
            for k in ("active", "total", "bytes_in", "bytes_out"):
                other[k] = other.get(k, 0) + int(secrets[sid].get(k, 0))
            for reason, n in dict(secrets[sid].get("refusals") or {}).items():
                other["r:" + reason] = other.get("r:" + reason, 0) + int(n)
        active.add_metric([OTHER], other["active"])
        total.add_metric([OTHER], other["total"])
        traffic.add_metric([OTHER, "client_to_dc"], other["bytes_in"])
        traffic.add_metric([OTHER, "dc_to_client"], other["bytes_out"])
        for key in sorted(k for k in other if k.startswith("r:")):
            refused.add_metric([OTHER, key[2:]], other[key])
    yield info
    yield active
    yield total
    yield traffic
    yield refused
    yield from gauges.values()
    yield GaugeMetricFamily("mtproxy_secret_series_aggregated",
                            f"Secrets beyond the per-secret series cap, summed under secret=\"{OTHER}\"",
                            value=len(rest))


# snapshot key -> (metric name, help); only secrets whose snapshot carries the figure get a sample
_GAUGES = {
    "enabled": ("mtproxy_secret_enabled", "1 when the secret is enabled, 0 when disabled"),
    "expires_at": ("mtproxy_secret_expiry_timestamp_seconds", "When the secret expires (unix time)"),
    "max_connections": ("mtproxy_secret_max_connections", "The secret's cap on concurrent sessions"),
    "max_unique_ips": ("mtproxy_secret_max_unique_ips", "The secret's cap on distinct client addresses"),
    "unique_ips": ("mtproxy_secret_unique_ips", "Distinct client addresses within the secret's window"),
    "quota_bytes": ("mtproxy_secret_quota_limit_bytes", "The secret's quota per period, both ways"),
    "period_bytes": ("mtproxy_secret_quota_used_bytes", "Bytes both ways in the current quota period"),
    "period_start": ("mtproxy_secret_quota_period_start_timestamp_seconds",
                     "When the current quota period started (unix time)"),
}


def _gauge_values(fig: Mapping[str, Any]) -> dict[str, float]:
    """The limits and usage a secret's snapshot carries, as numbers; limits left unset are omitted."""
    limits: Mapping[str, Any] = fig.get("limits") or {}
    usage: Mapping[str, Any] = fig.get("usage") or {}
    quota: Mapping[str, Any] = limits.get("quota") or {}
    found: dict[str, Any] = {
        "enabled": limits.get("enabled"),
        "expires_at": timestamp(limits.get("expires_at")),
        "max_connections": limits.get("max_connections"),
        "max_unique_ips": limits.get("max_unique_ips"),
        "quota_bytes": quota.get("limit_bytes"),
        "unique_ips": usage.get("unique_ips"),
        "period_bytes": usage.get("period_bytes"),
        "period_start": timestamp(usage.get("period_start")),
    }
    return {key: float(value) for key, value in found.items() if value is not None}  # bool -> 0/1
