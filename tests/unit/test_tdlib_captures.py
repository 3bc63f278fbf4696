"""The server handshake against first flights captured from real TDLib clients (tests/data/tdlib_hellos/)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from mtproxy.crypto.backend import Backend
from mtproxy.protocol import faketls
from mtproxy.protocol.errors import RejectReason
from mtproxy.protocol.handshake import Authenticated, Handshake, HandshakeSettings, NeedMore, Rejected, SecretTable
from mtproxy.protocol.replay import ReplayFilter
from mtproxy.protocol.secret import parse_secret

from .vectors import DATA

CAPTURES = DATA / "tdlib_hellos"
INDEX: dict[str, Any] = json.loads((CAPTURES / "index.json").read_text())
REQ_PQ_MULTI = (0xBE7E8EF1).to_bytes(4, "little")


def server(aes: Backend, *secrets: str) -> Handshake:
    table = SecretTable([(f"s{i}", parse_secret(s)) for i, s in enumerate(secrets)], aes)
    settings = HandshakeSettings(tls_domains=frozenset({INDEX["domain"]}))
    return Handshake(table, settings, ReplayFilter.in_process(256), os.urandom, aes=aes)


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [c for c in INDEX["captures"] if c["name"] == kind]


@pytest.mark.parametrize("capture", by_kind("ee"), ids=lambda c: c["file"])
def test_tdlib_fake_tls_hello_is_accepted_in_every_split(aes: Backend, capture: dict[str, Any]) -> None:
    data = (CAPTURES / capture["file"]).read_bytes()
    hello = data[: 5 + capture["record_length"]]
    now = float(capture["timestamp"])
    parsed = faketls.parse_client_hello(hello)
    assert parsed.sni == INDEX["domain"] and len(parsed.session_id) == 32
    for cut in range(0, len(hello), 7):
        hs = server(aes, "dd" + "00" * 16, capture["secret"])
        first = hs.feed(hello[:cut], now) if cut else NeedMore()
        assert isinstance(first, NeedMore) and not first.send
        step = hs.feed(hello[cut:], now)
        assert isinstance(step, NeedMore) and step.send.startswith(faketls.SERVER_HELLO_PREFIX), cut


@pytest.mark.parametrize("capture", by_kind("ee_other_key"), ids=lambda c: c["file"])
def test_tdlib_hello_under_another_key_is_rejected(aes: Backend, capture: dict[str, Any]) -> None:
    data = (CAPTURES / capture["file"]).read_bytes()
    step = server(aes, "ee" + INDEX["key"] + INDEX["domain"].encode().hex()).feed(data, float(capture["timestamp"]))
    assert isinstance(step, Rejected) and step.reason is RejectReason.TLS_BAD_HMAC and step.received == data


@pytest.mark.parametrize("capture", by_kind("classic") + by_kind("dd"), ids=lambda c: c["file"])
def test_tdlib_obfuscated_init_decodes_to_req_pq_multi(aes: Backend, capture: dict[str, Any]) -> None:
    data = (CAPTURES / capture["file"]).read_bytes()
    step = server(aes, capture["secret"]).feed(data, 0.0)
    assert isinstance(step, Authenticated), step
    session = step.auth
    assert session.dc_id == 1 and session.tag == (b"\xdd" * 4 if capture["name"] == "dd" else b"\xee" * 4)
    stream = session.from_client.update(session.pending)
    # Frame: 4-byte length, then auth_key_id 0, message id, length, then the constructor.
    assert stream[4:12] == bytes(8) and stream[24:28] == REQ_PQ_MULTI


@pytest.mark.parametrize("capture", by_kind("ee_full"), ids=lambda c: c["file"])
def test_tdlib_complete_fake_tls_flight_authenticates_in_every_split(aes: Backend, capture: dict[str, Any]) -> None:
    data = (CAPTURES / capture["file"]).read_bytes()
    now = float(capture["timestamp"])
    for cut in range(1, len(data), 13):
        hs = server(aes, capture["secret"])
        steps = [hs.feed(data[:cut], now)]
        if isinstance(steps[0], NeedMore):
            steps.append(hs.feed(data[cut:], now))
        step = steps[-1]
        assert isinstance(step, Authenticated), (cut, step)
        session = step.auth
        assert session.fake_tls and session.tag == b"\xdd" * 4 and session.dc_id == 1
        assert session.tls_reader is not None
        rest = data[cut:] if len(steps) == 1 else b""
        stream = session.from_client.update(session.pending + session.tls_reader.unwrap(rest))
        assert stream[4:12] == bytes(8) and stream[24:28] == REQ_PQ_MULTI
