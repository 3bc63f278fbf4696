"""Store schema 4: the optional per-secret "ad_tag". A real version-3 file (tests/data/store_v3.json, written
by the version-3 store) is read, migrated, written and read back; malformed tags are refused with the entry."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mtproxy.protocol.adtag import AdTagError, ad_tag_bytes, parse_ad_tag
from mtproxy.store import StoreData, StoreFormatError, read_store, update_store

V3_FILE = Path(__file__).resolve().parents[1] / "data" / "store_v3.json"
TAG = "00112233445566778899AABBCCDDEEFF"


def test_a_v3_file_migrates_to_4_keeping_everything(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    shutil.copy(V3_FILE, path)
    old = json.loads(path.read_text())
    data = read_store(path)
    assert [(m.from_version, m.to_version, m.at) for m in data.migrations] == [("3", 4, "")]
    assert [(r.id, r.own_domain, r.limits.max_connections, r.ad_tag) for r in data.secrets] == [
        ("phones", False, None, ""), ("guests", True, 5, "")]

    def tag_guests(current: StoreData) -> tuple[StoreData, None]:
        rec = current.find("guests")
        assert rec is not None
        return current.with_record(replace(rec, ad_tag=parse_ad_tag(TAG))), None

    update_store(path, tag_guests, clock=lambda: datetime(2026, 12, 6, tzinfo=UTC))
    doc = json.loads(path.read_text())
    assert doc["metadata"]["version"] == 4
    assert doc["metadata"]["migrations"] == [{"from": "3", "to": 4, "at": "2026-12-06T00:00:00Z"}]
    assert [e.get("ad_tag") for e in doc["secrets"]] == [None, TAG.lower()]  # written only when set
    for new, before in zip(doc["secrets"], old["secrets"], strict=True):
        assert {k: v for k, v in new.items() if k != "ad_tag"} == before
    back = read_store(path)
    assert back.find("guests").ad_tag == TAG.lower()  # type: ignore[union-attr]


@pytest.mark.parametrize(("tag", "problem"), [
    ("abc", "'ad_tag': an ad tag is exactly 32 hex digits"),
    ("z" * 32, "character 1 ('z') is not one"),
    (5, "field 'ad_tag' must be a string or null"),
])
def test_a_malformed_ad_tag_is_refused_naming_the_entry(tmp_path: Path, tag: object, problem: str) -> None:
    path = tmp_path / "secrets.json"
    doc = json.loads(V3_FILE.read_text())
    doc["metadata"]["version"] = 4
    doc["secrets"][1]["ad_tag"] = tag
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    with pytest.raises(StoreFormatError) as caught:
        update_store(path, lambda d: (d.without("phones"), None))
    assert "secrets[1] (id 'guests')" in str(caught.value) and problem in str(caught.value)
    assert path.read_bytes() == before


def test_ad_tag_parsing() -> None:
    assert parse_ad_tag(f"  {TAG}\n") == TAG.lower()
    assert ad_tag_bytes(TAG) == bytes.fromhex(TAG) and len(ad_tag_bytes(TAG)) == 16
    for bad in ("", TAG[:-1], TAG + "0", TAG[:-1] + " ", "0x" + TAG[2:]):
        with pytest.raises(AdTagError):
            parse_ad_tag(bad)
