"""/metrics rendering: per-secret series named by label, the series cap and `_other`, escaping, merging, promtool."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtproxy.accounts.limits import Limits, Quota, QuotaPeriod
from mtproxy.accounts.policy import Refusal
from mtproxy.config import ConfigError, resolve
from mtproxy.stats.counters import Counters, merge
from mtproxy.stats.render import OTHER, render_metrics, render_stats, series_names
from mtproxy.stats.snapshot import annotate

NOW = 1_800_000_000.0
PER_SECRET = ("mtproxy_secret_info", "mtproxy_secret_connections_active", "mtproxy_secret_connections",
              "mtproxy_secret_bytes", "mtproxy_secret_session_refusals")


def samples(body: bytes) -> dict[str, list[Any]]:
    """Family name -> its samples, as Prometheus' own client parses the text back."""
    return {f.name: list(f.samples) for f in text_string_to_metric_families(body.decode())}


def per_secret_names(body: bytes) -> set[str]:
    return {s.labels["secret"] for name in PER_SECRET for s in samples(body)[name]}


def promtool_check(body: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; scripts/install-test-deps installs it)")
    done = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert not done.stdout.strip() and not done.stderr.strip(), (done.stdout + done.stderr).decode()


def many_secrets(n: int) -> dict[str, Any]:
    """A merged snapshot with `n` secrets, annotated as the engine does; secret i moved i*10 bytes each way
    and had i sessions."""
    c = Counters(started_at=NOW - 60)
    for i in range(n):
        per = c.for_secret(f"s{i}")
        per.total, per.active, per.bytes_in, per.bytes_out = i, i % 3, i * 10, i * 10
        if i % 7 == 0:
            c.refuse(Refusal.QUOTA, f"s{i}")
    labels = {f"s{i}": f"user-{i}" for i in range(0, n, 2)}
    return annotate(merge([c.snapshot()], NOW - 60), labels, {"s1": Limits(max_connections=4)}, {})


def test_two_thousand_secrets_stay_under_the_cap_and_sum_into_other() -> None:
    snap = many_secrets(2000)
    body = render_metrics(snap, NOW, max_secrets=500)
    got = samples(body)
    names = per_secret_names(body)
    assert len(names) == 501  # the 500 busiest and _other
    busiest = {f"user-{i}" if i % 2 == 0 else f"s{i}" for i in range(1500, 2000)}
    assert names == busiest | {OTHER}
    # the rest (s0..s1499) summed under _other: totals over `secret` still add up
    traffic = {(s.labels["secret"], s.labels["direction"]): s.value for s in got["mtproxy_secret_bytes"]}
    assert traffic[(OTHER, "client_to_dc")] == sum(i * 10 for i in range(1500))
    assert sum(v for (_, d), v in traffic.items() if d == "dc_to_client") == sum(i * 10 for i in range(2000))
    sessions = {s.labels["secret"]: s.value for s in got["mtproxy_secret_connections"]}
    assert sessions[OTHER] == sum(range(1500))
    active = {s.labels["secret"]: s.value for s in got["mtproxy_secret_connections_active"]}
    assert active[OTHER] == sum(i % 3 for i in range(1500))
    refused = {s.labels["secret"]: s.value for s in got["mtproxy_secret_session_refusals"]}
    assert refused[OTHER] == len(range(0, 1500, 7))
    assert refused["user-1946"] == 1 and "s1947" not in refused  # 1946 = 7 * 278; only reasons that happened
    assert got["mtproxy_secret_series_aggregated"][0].value == 1500
    # s1's limit is not shown: it is summed into _other, and a cap has no sum
    assert not got["mtproxy_secret_max_connections"]
    per_secret_samples = sum(len(got[n]) for n in PER_SECRET)
    assert per_secret_samples <= 501 * 5 + 500  # info, active, total, 2 directions (+ refusals)
    promtool_check(body)


def test_the_cap_is_a_setting_and_zero_sums_everything() -> None:
    snap = many_secrets(30)
    assert per_secret_names(render_metrics(snap, NOW, max_secrets=10)) == (
        {f"user-{i}" if i % 2 == 0 else f"s{i}" for i in range(20, 30)} | {OTHER})
    assert per_secret_names(render_metrics(snap, NOW, max_secrets=0)) == {OTHER}
    every = render_metrics(snap, NOW, max_secrets=30)
    assert OTHER not in per_secret_names(every) and len(per_secret_names(every)) == 30
    assert samples(every)["mtproxy_secret_series_aggregated"][0].value == 0
    with pytest.raises(ValueError):
        render_metrics(snap, NOW, max_secrets=-1)


def test_the_cap_is_a_flag_and_a_settings_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = ["-S", "00" * 16, "--root", str(tmp_path)]
    assert resolve(base).metrics_max_secrets == 500
    assert resolve([*base, "--metrics-max-secrets", "20"]).metrics_max_secrets == 20
    with pytest.raises(ConfigError, match="--metrics-max-secrets"):
        resolve([*base, "--metrics-max-secrets", "-1"])
    settings = tmp_path / "settings.json"
    settings.write_text('{"metrics_max_secrets": 7}')
    assert resolve([*base, "--config", str(settings)]).metrics_max_secrets == 7


def test_label_escaping_round_trips() -> None:
    nasty = 'say "hi"\\ there\nnext line'
    c = Counters(started_at=NOW)
    c.for_secret("s1").total = 2
    body = render_metrics(annotate(c.snapshot(), {"s1": nasty}, {}, {}), NOW)
    got = samples(body)
    assert [(s.labels["secret"], s.value) for s in got["mtproxy_secret_connections"]] == [(nasty, 2)]
    assert [(s.labels["secret"], s.labels["id"]) for s in got["mtproxy_secret_info"]] == [(nasty, "s1")]
    assert b"\nnext line" not in body  # the newline is escaped, not a line break in the exposition
    promtool_check(body)


def test_secret_named_by_label_else_id_never_by_value() -> None:
    snap: dict[str, Any] = {"secrets": {
        "s1": {"label": "alice"}, "s2": {}, "s3": {"label": "s2"},  # s3's label is s2's id: s3 keeps its id
        "_other": {}, "s5": {"label": "_other"},  # the aggregate's name is never a secret's
    }}
    names = series_names(snap["secrets"])
    assert names == {"s1": "alice", "s2": "s2", "s3": "s3", "_other": "_other#", "s5": "s5"}
    assert len(set(names.values())) == len(names)


def test_limits_usage_and_refusals_render_when_present() -> None:
    c = Counters(started_at=NOW)
    c.for_secret("s1").bytes_in = 100
    c.refuse(Refusal.MAX_CONNECTIONS, "s1")
    c.refuse(Refusal.MAX_CONNECTIONS, "s1")
    c.refuse(Refusal.EXPIRED)  # no id: engine-wide only
    expires = datetime(2027, 1, 1, tzinfo=UTC)
    limits = Limits(enabled=False, expires_at=expires, max_connections=3, max_unique_ips=5,
                    quota=Quota(10_000, QuotaPeriod.MONTH))
    usage = {"period_bytes": 1234, "period_start": "2026-12-01T00:00:00Z", "unique_ips": 2}
    snap = annotate(c.snapshot(), {"s1": "team-a"}, {"s1": limits, "s2": Limits()}, {"s1": usage})
    got = samples(render_metrics(snap, NOW))

    def one(name: str, secret: str = "team-a") -> float:
        [value] = [s.value for s in got[name] if s.labels["secret"] == secret]
        return float(value)

    assert one("mtproxy_secret_enabled") == 0
    assert one("mtproxy_secret_expiry_timestamp_seconds") == expires.timestamp()
    assert one("mtproxy_secret_max_connections") == 3
    assert one("mtproxy_secret_max_unique_ips") == 5
    assert one("mtproxy_secret_unique_ips") == 2
    assert one("mtproxy_secret_quota_limit_bytes") == 10_000
    assert one("mtproxy_secret_quota_used_bytes") == 1234
    assert one("mtproxy_secret_quota_period_start_timestamp_seconds") == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert [(s.labels, s.value) for s in got["mtproxy_secret_session_refusals"]] == [
        ({"secret": "team-a", "reason": "max-connections"}, 2)]
    # a secret without limits (and no traffic yet) has its counters and enabled=1, and no cap series
    assert one("mtproxy_secret_enabled", "s2") == 1
    assert one("mtproxy_secret_connections", "s2") == 0
    assert not [s for s in got["mtproxy_secret_max_connections"] if s.labels["secret"] == "s2"]
    engine_wide = {s.labels["reason"]: s.value for s in got["mtproxy_session_refusals"]}
    assert engine_wide["max-connections"] == 2 and engine_wide["expired"] == 1


def test_merge_across_workers() -> None:
    def worker(sessions: int, refusals: int) -> dict[str, Any]:
        c = Counters(started_at=NOW)
        per = c.for_secret("s1")
        per.total, per.active, per.bytes_in, per.bytes_out = sessions, 1, sessions * 100, sessions * 10
        for _ in range(refusals):
            c.refuse(Refusal.QUOTA, "s1")
        return c.snapshot()

    a, b, c = worker(3, 2), worker(4, 0), worker(5, 1)
    usage = {"period_bytes": 700, "period_start": "2026-12-01T00:00:00Z", "unique_ips": 3}
    # label, limits and usage are the same for every worker: added once, to the merged snapshot
    merged = annotate(merge([a, b, c], NOW), {"s1": "team-a"}, {"s1": Limits(max_connections=8)}, {"s1": usage})
    s1 = merged["secrets"]["s1"]
    assert (s1["total"], s1["active"], s1["bytes_in"], s1["bytes_out"]) == (12, 3, 1200, 120)
    assert s1["refusals"] == {"quota": 3}
    assert (s1["label"], s1["limits"]["max_connections"], s1["usage"]["period_bytes"]) == ("team-a", 8, 700)
    assert merged["refusals"]["quota"] == 3
    # a dead worker's totals folded in (as the supervisor does) and merged again: counters never go back
    folded = merge([a], NOW)
    again = merge([b, c, folded], NOW)["secrets"]["s1"]
    assert (again["total"], again["refusals"]) == (12, {"quota": 3})


def test_stats_text_and_old_snapshots_unchanged() -> None:
    """Snapshots without the new keys (an older worker, the supervisor's retired totals) still render."""
    old = {"started_at": NOW, "workers": 1, "active": 0, "total": 1, "handshakes_ok": 1, "bytes_in": 5,
           "bytes_out": 6, "masked": 0, "mask_failed": 0, "upstream_failed": 0, "refused_limit": 0,
           "rejects": {}, "modes": {}, "secrets_loaded": 1, "reloads_ok": 0, "reloads_failed": 0, "cert_size": 0,
           "secrets": {"s1": {"active": 0, "total": 1, "bytes_in": 5, "bytes_out": 6}}}
    merged = merge([old], NOW)
    text = render_stats(merged, NOW + 3)
    assert "secret_s1_total\t1\n" in text and "secret_s1_bytes_out\t6\n" in text
    assert "label" not in text and "refusals\t" not in text
    body = render_metrics(merged, time.time())
    assert [s.labels["secret"] for s in samples(body)["mtproxy_secret_connections"]] == ["s1"]
    promtool_check(body)
