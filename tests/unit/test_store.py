"""The secrets store: schema, validation, migration, atomic 0600 writes and the untouched-on-error rule."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from mtproxy.protocol.secret import SecretKind, generate_secret, parse_secret
from mtproxy.store import (
    STORE_VERSION,
    SecretRecord,
    StoreAccessError,
    StoreData,
    StoreFormatError,
    locked,
    read_store,
    update_store,
)

KEY = bytes(range(16))


def _record(
    secret_id: str, kind: SecretKind = SecretKind.PADDED, key: bytes = KEY, **kw: object
) -> SecretRecord:
    domain = "example.com" if kind is SecretKind.FAKE_TLS else None
    return SecretRecord.from_secret(secret_id, generate_secret(key, kind, domain), **kw)  # type: ignore[arg-type]


def _add(record: SecretRecord):  # type: ignore[no-untyped-def]
    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        return data.with_record(record), record

    return change


def test_missing_file_is_an_empty_store(tmp_path: Path) -> None:
    data = read_store(tmp_path / "nope.json")
    assert data.secrets == ()
    assert data.active_secrets() == []


def test_round_trip_all_kinds_mode_0600_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "config" / "s.json"
    update_store(path, _add(_record("a", SecretKind.CLASSIC, bytes(16), label="plain-one")))
    update_store(path, _add(_record("b", SecretKind.PADDED, bytes([1] * 16), description="desc")))
    update_store(path, _add(_record("c", SecretKind.FAKE_TLS, bytes([2] * 16))))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["metadata"]["version"] == STORE_VERSION
    assert doc["metadata"]["last_modified"].endswith("Z")
    assert [s["type"] for s in doc["secrets"]] == ["plain", "dd", "ee"]
    assert set(doc["secrets"][0]) == {
        "id", "label", "value", "type", "domain", "padding_enabled",
        "created_at", "created_by", "active", "description",
    }
    assert doc["secrets"][1]["value"] == "dd" + "01" * 16
    assert doc["secrets"][2]["value"] == "ee" + "02" * 16 + b"example.com".hex()
    assert doc["secrets"][2]["domain"] == "example.com"
    data = read_store(path)
    ids = [sid for sid, _ in data.active_secrets()]
    assert ids == ["a", "b", "c"]
    assert data.active_secrets()[2][1] == parse_secret(doc["secrets"][2]["value"])
    # No temp files or other leftovers beside the store, except its lock.
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.json", "s.json.lock"]


def test_inactive_secrets_are_not_served(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    update_store(path, _add(_record("a", active=False)))
    assert read_store(path).active_secrets() == []


def test_find_by_id_label_and_any_secret_spelling(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    update_store(path, _add(_record("abc", label="phones")))
    data = read_store(path)
    secret = data.secrets[0].secret()
    assert data.find("abc") is data.secrets[0]
    assert data.find("phones") is data.secrets[0]
    assert data.find(secret.to_hex()) is data.secrets[0]
    assert data.find(secret.to_base64url()) is data.secrets[0]
    assert data.find(KEY.hex()) is data.secrets[0]  # the bare key of a dd secret
    assert data.find("nobody") is None


def test_repr_never_shows_the_secret() -> None:
    record = _record("a")
    assert KEY.hex() not in repr(record)
    assert KEY.hex() not in repr(StoreData(secrets=(record,)))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level"),
        ('{"secrets": 3, "metadata": {"version": 1}}', "'secrets' must be a list"),
        ('{"secrets": [{"id": "a", "value": "zz", "type": "dd"}], "metadata": {"version": 1}}', "secrets[0]"),
        ('{"secrets": [{"id": "a", "value": "' + "00" * 16 + '", "type": "xx"}], "metadata": {"version": 1}}',
         "plain, dd or ee"),
        ('{"secrets": [{"id": "a", "value": "' + "00" * 16 + '", "type": "ee"}], "metadata": {"version": 1}}',
         "no ee prefix"),
        ('{"secrets": [{"id": "a", "value": "' + "00" * 16 + '", "active": "yes"}],'
         ' "metadata": {"version": 1}}',
         "'active' must be true or false"),
        ('{"secrets": [{"id": "a", "value": "' + "00" * 16 + '"}, {"id": "a", "value": "' + "01" * 16
         + '"}], "metadata": {"version": 1}}', "appears twice"),
        ('{"secrets": [], "metadata": {"version": 99}}', "newer mtproxy"),
        # Only the plan's own release string is a known format; a neighbour of it is not guessed at.
        ('{"secrets": [], "metadata": {"version": "6.0.1"}}', "not a schema this mtproxy knows"),
        ('{"secrets": [], "metadata": {"version": "1"}}', "not a schema this mtproxy knows"),
    ],
)
def test_malformed_file_names_file_and_problem_and_is_left_untouched(
    tmp_path: Path, content: str, needle: str
) -> None:
    path = tmp_path / "s.json"
    path.write_text(content)
    before = path.read_bytes()
    with pytest.raises(StoreFormatError) as info:
        read_store(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)
    with pytest.raises(StoreFormatError):
        update_store(path, _add(_record("new")))
    assert path.read_bytes() == before


def test_error_messages_never_echo_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    bad = "dd" + "ab" * 20  # wrong length for a dd secret, but still secret-looking material
    path.write_text(json.dumps({"secrets": [{"id": "a", "value": bad}], "metadata": {"version": 1}}))
    with pytest.raises(StoreFormatError) as info:
        read_store(path)
    assert bad not in str(info.value)


def test_version_0_plan_file_is_migrated_on_next_write(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    legacy = {
        "secrets": [{"secret": "dd" + "11" * 16, "created_at": "2025-01-01T00:00:00Z", "description": "old"}]
    }
    path.write_text(json.dumps(legacy))
    data = read_store(path)
    assert data.secrets[0].type == "dd"
    assert data.secrets[0].description == "old"
    update_store(path, _add(_record("new", key=bytes([9] * 16))))
    doc = json.loads(path.read_text())
    assert doc["metadata"]["version"] == STORE_VERSION
    assert doc["secrets"][0]["value"] == "dd" + "11" * 16
    assert "secret" not in doc["secrets"][0]


def test_the_plans_own_6_0_0_file_is_read_migrated_and_the_migration_recorded(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    plan = {
        "secrets": [
            {"secret": "11" * 16, "created_at": "2025-01-01T00:00:00Z", "description": "phones",
             "padding_enabled": True},
            {"secret": "22" * 16, "created_at": "2025-01-02T00:00:00Z", "padding_enabled": False},
        ],
        "metadata": {"version": "6.0.0", "last_modified": "2025-01-02T00:00:00Z"},
    }
    path.write_text(json.dumps(plan))
    data = read_store(path)
    # padding_enabled is what the plan handed out: the same key with the dd prefix, or the bare classic key.
    assert [(r.id, r.type, r.padding_enabled) for r in data.secrets] == [("s1", "dd", True),
                                                                        ("s2", "plain", False)]
    assert data.active_secrets()[0][1] == parse_secret("dd" + "11" * 16)
    assert data.secrets[0].description == "phones" and data.secrets[0].created_at == "2025-01-01T00:00:00Z"
    # one record per step, each stamped when the migrated file is first written
    assert [(m.from_version, m.to_version, m.at) for m in data.migrations] == [("6.0.0", 1, ""), ("1", 2, ""),
                                                                                    ("2", 3, ""), ("3", 4, "")]

    update_store(path, _add(_record("new", key=bytes([9] * 16))))
    doc = json.loads(path.read_text())
    assert doc["metadata"]["version"] == STORE_VERSION
    assert [s["value"] for s in doc["secrets"]] == ["dd" + "11" * 16, "22" * 16, "dd" + "09" * 16]
    recorded = doc["metadata"]["migrations"]
    assert [(m["from"], m["to"]) for m in recorded] == [("6.0.0", 1), ("1", 2), ("2", 3), ("3", 4)]
    assert {m["at"] for m in recorded} == {doc["metadata"]["last_modified"]}
    # Later writes keep the record as it was first stamped.
    first = recorded[0]["at"]
    update_store(path, lambda d: (d.without("new"), None))
    again = json.loads(path.read_text())["metadata"]["migrations"]
    assert again == [{"from": "6.0.0", "to": 1, "at": first}, {"from": "1", "to": 2, "at": first},
                     {"from": "2", "to": 3, "at": first}, {"from": "3", "to": 4, "at": first}]


def test_a_current_file_records_no_migration(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    update_store(path, _add(_record("a")))
    assert "migrations" not in json.loads(path.read_text())["metadata"]
    assert read_store(path).migrations == ()


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.mkdir()  # a directory in the file's place fails for root too
    with pytest.raises(StoreAccessError) as info:
        read_store(path)
    assert "is a directory" in str(info.value)


def test_stale_temp_files_are_cleaned_under_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    stale = tmp_path / ".s.json.abc123.tmp"
    stale.write_text("{half")
    update_store(path, _add(_record("a")))
    assert not stale.exists()


def test_a_held_lock_makes_a_second_writer_wait_then_fail_clearly(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    with locked(path):
        with pytest.raises(StoreAccessError) as info:
            with locked(path, timeout=0.2):
                pass
        assert "still locked" in str(info.value)
    with locked(path, timeout=0.2):  # released again
        pass


def test_after_runs_under_the_lock_with_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    seen: list[StoreData] = []

    def after(data: StoreData) -> None:
        with pytest.raises(StoreAccessError):
            with locked(path, timeout=0.05):
                pass
        seen.append(data)

    update_store(path, _add(_record("a")), after=after)
    assert seen[0].last_modified and [r.id for r in seen[0].secrets] == ["a"]
