"""TDLib's own link parser (getInternalLinkType) reads our links back as the same server, port and secret."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from mtproxy.links import make_links
from mtproxy.protocol.secret import SecretKind, generate_secret, parse_secret

pytestmark = [pytest.mark.interop, pytest.mark.netns]

# Runs in its own process inside a fresh network namespace: once given its parameters, TDLib starts
# connecting to Telegram by itself, and no packet may leave this machine.
_DRIVER = r"""
import json, sys, tempfile, time
import tdjson
tdjson.td_execute(json.dumps({"@type": "setLogVerbosityLevel", "new_verbosity_level": 0}).encode())
links = json.loads(sys.stdin.read())
client = tdjson.td_create_client_id()
def send(request):
    tdjson.td_send(client, json.dumps(request).encode())
with tempfile.TemporaryDirectory(prefix="tdlib-links-") as db:
    # getInternalLinkType cannot run through td_execute, and a client answers only once it has parameters.
    send({"@type": "setTdlibParameters", "use_test_dc": True, "database_directory": db, "files_directory": db,
          "use_file_database": False, "use_chat_info_database": False, "use_message_database": False,
          "use_secret_chats": False, "api_id": 94575, "api_hash": "a7ccab0a2dfeba2c30e3c7b42ac6f4eb",
          "system_language_code": "en", "device_model": "links", "system_version": "1",
          "application_version": "1"})
    for index, link in enumerate(links):
        send({"@type": "getInternalLinkType", "link": link, "@extra": str(index)})
    answers = {}
    deadline = time.monotonic() + 30
    while len(answers) < len(links) and time.monotonic() < deadline:
        raw = tdjson.td_receive(0.5)
        if raw:
            event = json.loads(raw)
            if "@extra" in event:
                answers[event["@extra"]] = event
    send({"@type": "close"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        raw = tdjson.td_receive(0.5)
        if raw and b"authorizationStateClosed" in raw:
            break
print(json.dumps([answers.get(str(i)) for i in range(len(links))]))
"""


def _cases() -> list[tuple[str, int, str]]:
    secrets = [
        generate_secret(bytes(range(16)), SecretKind.CLASSIC),
        generate_secret(bytes(range(16, 32)), SecretKind.PADDED),
        generate_secret(bytes(range(32, 48)), SecretKind.FAKE_TLS, "www.example.com"),
        generate_secret(bytes([0xFF] * 16), SecretKind.FAKE_TLS, "abcd"),
        generate_secret(bytes([0x01] * 16), SecretKind.FAKE_TLS, "a-very-long-subdomain.cdn.example.org"),
    ]
    servers = [("203.0.113.5", 8443), ("proxy.example.net", 443), ("2001:db8::5", 2053)]
    cases = []
    for secret in secrets:
        for server, port in servers:
            links = make_links(server, port, secret)
            cases += [(links.tg, port, secret.to_hex()), (links.https, port, secret.to_hex())]
    return cases


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root for unshare -n")
def test_tdlib_parses_our_links_to_the_same_server_port_and_secret() -> None:
    pytest.importorskip("tdjson")
    cases = _cases()
    proc = subprocess.run(
        ["unshare", "-n", "--", sys.executable, "-c", _DRIVER],
        input=json.dumps([link for link, _, _ in cases]), capture_output=True, text=True, timeout=90, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = json.loads(proc.stdout.strip().splitlines()[-1])
    for (link, port, secret_hex), answer in zip(cases, answers, strict=True):
        assert answer is not None, f"TDLib gave no answer for {link}"
        assert answer["@type"] == "internalLinkTypeProxy", (link, answer)
        proxy = answer.get("proxy", answer)  # TDLib >= 1.8.4x nests it; older versions did not
        server = link.split("server=", 1)[1].split("&", 1)[0]
        assert proxy["server"] == server
        assert proxy["port"] == port
        assert proxy["type"]["@type"] == "proxyTypeMtproto"
        # TDLib re-encodes the secret (base64url for ee); the bytes must be ours exactly.
        assert parse_secret(proxy["type"]["secret"]) == parse_secret(secret_hex)
        assert parse_secret(proxy["type"]["secret"]).to_hex() == secret_hex
