"""The per-DC counts of dials through the SOCKS5 upstream: a worker's snapshot, several workers merged, and
how /stats and /metrics show them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mtproxy.stats.counters import Counters, merge
from mtproxy.stats.render import render_metrics, render_stats


def worker(*dials: tuple[str, bool]) -> Counters:
    counters = Counters(started_at=100.0, upstream="127.0.0.1:10808")
    for dc, ok in dials:
        counters.via_upstream_dial(dc, ok)
    return counters


def test_workers_sum_per_dc() -> None:
    one = worker(("2", True), ("2", True), ("4", False)).snapshot()
    two = worker(("2", False), ("other", True)).snapshot()
    assert one["via_upstream"] == {"2": {"ok": 2, "failed": 0}, "4": {"ok": 0, "failed": 1}}
    merged = merge([one, two], 100.0)
    assert merged["upstream"] == "127.0.0.1:10808"
    assert merged["via_upstream"] == {"2": {"ok": 2, "failed": 1}, "4": {"ok": 0, "failed": 1},
                                      "other": {"ok": 1, "failed": 0}}

    lines = dict(line.split("\t") for line in render_stats(merged, 200.0).splitlines())
    assert (lines["upstream_dc_2_ok"], lines["upstream_dc_2_failed"]) == ("2", "1")
    assert lines["upstream_dc_other_ok"] == "1"

    families = {f.name: f for f in text_string_to_metric_families(render_metrics(merged, 200.0).decode())}
    samples = {(s.labels["dc"], s.labels["result"]): s.value for s in families["mtproxy_upstream_dc_dials"].samples
               if s.name.endswith("_total")}
    assert samples == {("2", "ok"): 2, ("2", "failed"): 1, ("4", "ok"): 0, ("4", "failed"): 1,
                       ("other", "ok"): 1, ("other", "failed"): 0}


def test_direct_engines_show_nothing_new() -> None:
    snap = Counters(started_at=100.0).snapshot()
    assert snap["upstream"] == "" and snap["via_upstream"] == {}
    assert "upstream_dc_" not in render_stats(snap, 200.0)
    assert "mtproxy_upstream_dc_dials_total{" not in render_metrics(snap, 200.0).decode()
    # an older worker's snapshot (before the upstream) merges as well
    old = {k: v for k, v in snap.items() if k not in ("upstream", "via_upstream")}
    assert merge([old], 100.0)["via_upstream"] == {}
