"""Where listings take usage from: the engine's live view of its ledger first, else the ledger file (read by
accounts/usage.py), and a reset the ledger has not applied yet reads as zero."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from mtproxy.operations.usage_source import LedgerAndEngine
from mtproxy.paths import Paths
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.store import SecretRecord, StoreData

RESET = "2026-12-06T12:00:00Z"


def _store(reset: str = "") -> StoreData:
    record = SecretRecord.from_secret("a", Secret(os.urandom(16), SecretKind.FAKE_TLS, "example.com"))
    return StoreData((replace(record, usage_reset_at=reset),))


def _ledger(paths: Paths, **entry: Any) -> None:
    paths.usage_file.parent.mkdir(parents=True, exist_ok=True)
    paths.usage_file.write_text(json.dumps({"version": 1, "secrets": {"a": entry}}))


def test_the_engines_live_usage_wins_over_the_file(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    _ledger(paths, bytes_in=1, bytes_out=1, period_bytes=2)
    live = {"a": {"active": 3, "total": 9, "bytes_in": 5, "bytes_out": 5,
                  "usage": {"bytes_in": 700, "bytes_out": 300, "connections_total": 12, "unique_ips": 4,
                            "period_bytes": 1000, "period_start": None, "last_seen": RESET, "reset_at": None}}}
    found = LedgerAndEngine(paths, lambda _: live).usage(_store())["a"]
    assert (found.bytes_total, found.period_bytes, found.unique_ips, found.connections_active) == (1000, 1000, 4, 3)
    assert found.connections_total == 12 and found.source == "ledger"


def test_without_an_engine_the_file_is_read(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    _ledger(paths, bytes_in=10, bytes_out=20, period_bytes=30, connections_total=2)
    found = LedgerAndEngine(paths, lambda _: None).usage(_store())["a"]
    assert (found.bytes_total, found.period_bytes, found.unique_ips, found.connections_active) == (30, 30, None, None)
    paths.usage_file.write_text("{broken")  # the engine sets such a file aside; listings show no usage
    assert LedgerAndEngine(paths, lambda _: None).usage(_store())["a"].source == "none"


def test_a_reset_not_applied_yet_reads_as_zero(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    _ledger(paths, bytes_in=10, bytes_out=20, period_bytes=30, reset_at="2026-12-01T00:00:00Z")
    found = LedgerAndEngine(paths, lambda _: None).usage(_store(RESET))["a"]
    assert (found.bytes_total, found.period_start) == (0, RESET)
    _ledger(paths, bytes_in=7, bytes_out=0, period_bytes=7, reset_at=RESET)
    assert LedgerAndEngine(paths, lambda _: None).usage(_store(RESET))["a"].bytes_total == 7
