"""Store schemas 2 and 3: per-secret limits, a secret's own host name, the v2 -> v3, v1 -> v3 and v0 -> v3
migrations, and malformed limits refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mtproxy.accounts.limits import Limits, Quota, QuotaPeriod
from mtproxy.store import STORE_VERSION, SecretRecord, StoreData, StoreFormatError, read_store, update_store

KEY_A = "dd" + "11" * 16
KEY_B = "22" * 16
LIMITS = Limits(expires_at=datetime(2027, 1, 31, tzinfo=UTC), max_connections=5, max_unique_ips=3,
                quota=Quota(10 * 2**30, QuotaPeriod.MONTH, anchor_day=15, timezone="Europe/Berlin"),
                rate_limit=1_000_000, note="Alice's phone")


def _v1_file(path: Path) -> bytes:
    doc = {"secrets": [
        {"id": "a", "label": "alice", "value": KEY_A, "type": "dd", "domain": None, "padding_enabled": True,
         "created_at": "2026-01-01T00:00:00Z", "created_by": "cli:root", "active": True, "description": ""},
        {"id": "b", "label": "", "value": KEY_B, "type": "plain", "active": False},
    ], "metadata": {"last_modified": "2026-01-01T00:00:00Z", "version": 1,
                    "migrations": [{"from": "6.0.0", "to": 1, "at": "2025-12-01T00:00:00Z"}]}}
    path.write_text(json.dumps(doc))
    return path.read_bytes()


def test_schema_version_is_4() -> None:
    assert STORE_VERSION == 4


def test_a_v1_file_is_read_migrated_written_and_read_again(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    _v1_file(path)
    data = read_store(path)
    assert [(r.id, r.active, r.limits) for r in data.secrets] == [("a", True, Limits()),
                                                                  ("b", False, Limits(enabled=False))]
    assert [(m.from_version, m.to_version, m.at) for m in data.migrations] == [
        ("6.0.0", 1, "2025-12-01T00:00:00Z"), ("1", 2, ""), ("2", 3, ""), ("3", 4, "")]

    def limit_a(current: StoreData) -> tuple[StoreData, None]:
        rec = current.find("alice")
        assert rec is not None
        from dataclasses import replace
        return current.with_record(replace(rec, limits=LIMITS)), None

    update_store(path, limit_a, clock=lambda: datetime(2026, 2, 1, tzinfo=UTC))
    doc = json.loads(path.read_text())
    assert doc["metadata"]["version"] == 4
    assert doc["metadata"]["migrations"] == [{"from": "6.0.0", "to": 1, "at": "2025-12-01T00:00:00Z"},
                                             {"from": "1", "to": 2, "at": "2026-02-01T00:00:00Z"},
                                             {"from": "2", "to": 3, "at": "2026-02-01T00:00:00Z"},
                                             {"from": "3", "to": 4, "at": "2026-02-01T00:00:00Z"}]
    entry = doc["secrets"][0]
    assert entry["active"] is True and "enabled" not in entry["limits"]
    assert entry["limits"] == {"expires_at": "2027-01-31T00:00:00Z", "max_connections": 5, "max_unique_ips": 3,
                               "unique_ip_window": 86400, "rate_limit": 1_000_000, "note": "Alice's phone",
                               "quota": {"limit_bytes": 10 * 2**30, "period": "month", "anchor_day": 15,
                                         "timezone": "Europe/Berlin"}}
    assert "limits" not in doc["secrets"][1]  # absent = no limits; "active": false carries the switch
    assert doc["secrets"][1]["active"] is False
    again = read_store(path)
    assert again.find("a") is not None and again.find("a").limits == LIMITS  # type: ignore[union-attr]
    assert again.find("b").limits == Limits(enabled=False)  # type: ignore[union-attr]
    assert again.migrations[0] == data.migrations[0] and again.migrations[1].at == "2026-02-01T00:00:00Z"
    assert again.active_secrets() == [("a", again.secrets[0].secret())]


def test_a_v0_plan_file_is_migrated_to_4_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"secrets": [{"secret": "33" * 16, "padding_enabled": True}]}))
    update_store(path, lambda d: (StoreData(d.secrets, d.last_modified, d.version, d.migrations), None))
    doc = json.loads(path.read_text())
    assert doc["metadata"]["version"] == 4
    assert [(m["from"], m["to"]) for m in doc["metadata"]["migrations"]] == [("0", 1), ("1", 2), ("2", 3),
                                                                             ("3", 4)]
    back = read_store(path)
    assert back.secrets[0].value == "dd" + "33" * 16 and back.secrets[0].limits == Limits()


def test_a_newer_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"secrets": [], "metadata": {"version": 5}}')
    before = path.read_bytes()
    with pytest.raises(StoreFormatError, match="newer mtproxy"):
        update_store(path, lambda d: (StoreData(), None))
    assert path.read_bytes() == before


@pytest.mark.parametrize(("limits", "problem"), [
    ({"max_connections": -1}, "secrets[1] (id 'b'): limits.max_connections must be a whole number"),
    ({"quota": {"limit_bytes": 5, "period": "year"}}, "secrets[1] (id 'b'): limits.quota.period must be day"),
    ({"quota": {"limit_bytes": 5, "timezone": "Mars/Base"}}, "not a known IANA time zone"),
    ({"expires_at": "soon"}, "limits.expires_at must be an ISO 8601 time"),
    ({"speed": 3}, "secrets[1] (id 'b'): limits: unknown field(s) speed"),
    ("fast", "secrets[1] (id 'b'): limits must be an object"),
    ({"enabled": True}, "limits.enabled contradicts 'active'"),
])
def test_malformed_limits_name_file_and_entry_and_lose_nothing(tmp_path: Path, limits: object, problem: str) -> None:
    path = tmp_path / "s.json"
    _v1_file(path)
    doc = json.loads(path.read_text())
    doc["metadata"]["version"] = 2
    doc["secrets"][1]["limits"] = limits
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    with pytest.raises(StoreFormatError) as caught:
        update_store(path, lambda d: (d.without("a"), None))
    assert str(path) in str(caught.value) and problem in str(caught.value)
    assert path.read_bytes() == before


def test_a_record_built_with_limits_keeps_active_as_the_switch() -> None:
    from mtproxy.protocol.secret import parse_secret

    rec = SecretRecord.from_secret("x", parse_secret(KEY_B), active=False, limits=LIMITS)
    assert rec.active is False and rec.limits.enabled is False and rec.limits.max_connections == 5
    assert rec.to_json()["active"] is False and "enabled" not in rec.to_json()["limits"]


OWN = "ee" + "44" * 16 + b"k3f9q2ab.users.example.com".hex()


def test_a_v2_file_moves_to_4_and_a_secrets_own_domain_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"secrets": [{"id": "a", "value": KEY_A, "type": "dd", "active": True}],
                                "metadata": {"last_modified": "", "version": 2}}))
    data = read_store(path)
    assert [(m.from_version, m.to_version) for m in data.migrations] == [("2", 3), ("3", 4)]
    own = SecretRecord(id="b", value=OWN, type="ee", domain="k3f9q2ab.users.example.com", own_domain=True)
    update_store(path, lambda d: (d.with_record(own), None), clock=lambda: datetime(2026, 2, 1, tzinfo=UTC))
    doc = json.loads(path.read_text())
    assert doc["metadata"]["version"] == 4
    assert [entry.get("own_domain") for entry in doc["secrets"]] == [None, True]  # written only when set
    back = read_store(path)
    assert [(r.id, r.own_domain, r.domain) for r in back.secrets] == [
        ("a", False, None), ("b", True, "k3f9q2ab.users.example.com")]


@pytest.mark.parametrize(("entry", "problem"), [
    ({"id": "a", "value": KEY_A, "type": "dd", "own_domain": True}, "'own_domain' is for an ee secret"),
    ({"id": "a", "value": "ee" + "44" * 16 + b"example.com".hex(), "type": "ee", "own_domain": True},
     "'own_domain' is for an ee secret whose domain is a label under a base"),
    ({"id": "a", "value": OWN, "type": "ee", "own_domain": "yes"}, "own_domain"),
])
def test_a_malformed_own_domain_is_refused_and_the_file_kept(tmp_path: Path, entry: dict[str, object],
                                                             problem: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"secrets": [entry], "metadata": {"last_modified": "", "version": 3}}))
    before = path.read_bytes()
    with pytest.raises(StoreFormatError, match=problem):
        update_store(path, lambda d: (d, None))
    assert path.read_bytes() == before
