"""Refusals by a secret's limits: counted per reason across workers, shown in /stats and /metrics, and
logged on a line of their own that the shipped fail2ban filter leaves alone."""

from __future__ import annotations

import logging
import re

import pytest

from mtproxy.accounts.policy import Refusal
from mtproxy.host import templates
from mtproxy.protocol.errors import RejectReason
from mtproxy.runtime import logs
from mtproxy.stats.counters import Counters, merge
from mtproxy.stats.render import render_metrics, render_stats


def test_counted_per_reason_and_merged_across_workers() -> None:
    one, two = Counters(started_at=0.0), Counters(started_at=0.0)
    one.refuse(Refusal.QUOTA)
    one.refuse(Refusal.QUOTA)
    two.refuse(Refusal.QUOTA)
    two.refuse(Refusal.MAX_UNIQUE_IPS)
    merged = merge([one.snapshot(), two.snapshot()], 0.0)
    assert merged["refusals"] == {"disabled": 0, "expired": 0, "quota": 3, "max-connections": 0,
                                  "max-unique-ips": 1}
    stats = render_stats(merged, 10.0)
    assert "session_refusals_quota\t3\n" in stats and "session_refusals_expired\t0\n" in stats
    metrics = render_metrics(merged, 10.0).decode()
    assert 'mtproxy_session_refusals_total{reason="max-unique-ips"} 1.0' in metrics


def test_a_snapshot_from_a_worker_without_refusals_still_merges() -> None:
    old = Counters(started_at=0.0).snapshot()
    del old["refusals"]
    assert merge([old], 0.0)["refusals"]["quota"] == 0


def _line(emit: object, caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.WARNING, logger="mtproxy.reject"):
        caplog.clear()
        emit()  # type: ignore[operator]
    (record,) = caplog.records
    return record.getMessage()


def _filter_regex() -> re.Pattern[str]:
    text = templates.fail2ban_filter()
    failregex = next(line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("failregex"))
    # fail2ban's <ADDR> tag; the date is cut off before matching, so a line is matched from its `mtproxy[`
    return re.compile(failregex.replace("<ADDR>", r"(?P<addr>[0-9a-fA-F.:]+)"))


def test_refusals_have_their_own_line_and_fail2ban_ignores_it(caplog: pytest.LogCaptureFixture) -> None:
    refused = _line(lambda: logs.log_refusal(("2001:db8::7", 40000), ("::", 8443), Refusal.MAX_CONNECTIONS,
                                             "team-a"), caplog)
    assert refused == "refused session from 2001:db8::7 port 40000 on :::8443: reason=max-connections id=team-a"
    rejected = _line(lambda: logs.log_reject(("203.0.113.5", 51234), ("0.0.0.0", 8443), RejectReason.REPLAY),
                     caplog)
    pattern = _filter_regex()
    hit = pattern.search(f"mtproxy[42]: {rejected}")
    assert hit is not None and hit.group("addr") == "203.0.113.5"
    assert pattern.search(f"mtproxy[42]: {refused}") is None
