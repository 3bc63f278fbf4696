"""doctor's judgments (pure) and its reading of /proc/net/tcp (a real listening socket)."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

import pytest

from mtproxy.host.netprobe import Listener, _address, listening
from mtproxy.operations.doctor_rules import (
    Finding,
    Severity,
    exit_status,
    judge_dcs,
    judge_domain,
    judge_mask_flight,
    judge_port,
    judge_skew,
)

NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)


@pytest.mark.parametrize(("offset", "severity"), [
    (0, Severity.OK), (-9, Severity.OK), (30, Severity.OK), (61, Severity.WARNING), (-117, Severity.WARNING),
    (118, Severity.ERROR), (-119, Severity.ERROR), (3600, Severity.ERROR),
])
def test_skew_against_the_window(offset: int, severity: Severity) -> None:
    found = judge_skew(NOW + timedelta(seconds=offset), NOW, 120.0, "www.example.com")
    assert found.severity is severity, found
    if severity is not Severity.OK:
        assert f"{abs(offset)} s {'ahead of' if offset > 0 else 'behind'} www.example.com's" in found.message
        assert "timedatectl" in found.fix


def test_a_wider_window_from_the_settings_tolerates_more() -> None:
    assert judge_skew(NOW + timedelta(seconds=200), NOW, 600.0, "x").severity is Severity.OK
    assert "±600 s" in judge_skew(NOW + timedelta(seconds=700), NOW, 600.0, "x").message


def _severities(*severities: Severity) -> list[Finding]:
    return [Finding("g", str(i), s, "m") for i, s in enumerate(severities)]


def test_exit_status_is_the_worst_severity() -> None:
    assert exit_status([]) == 0
    assert exit_status(_severities(Severity.OK, Severity.SKIPPED)) == 0
    assert exit_status(_severities(Severity.OK, Severity.WARNING, Severity.SKIPPED)) == 1
    assert exit_status(_severities(Severity.WARNING, Severity.ERROR, Severity.OK)) == 2


def test_domain_on_this_server_is_wrong_unless_the_mask_is_elsewhere() -> None:
    own = {"198.51.100.7"}
    masked = judge_domain("cdn.example.org", ["198.51.100.7"], "", own, True, "cdn.example.org:443")
    assert masked.severity is Severity.ERROR and "come back here" in masked.message
    fronted = judge_domain("cdn.example.org", ["198.51.100.7"], "", own, False, "127.0.0.1:8080")
    assert fronted.severity is Severity.WARNING and "127.0.0.1:8080" in fronted.fix
    elsewhere = judge_domain("cdn.example.org", ["192.0.2.1"], "", own, True, "cdn.example.org:443")
    assert elsewhere.severity is Severity.OK


def test_a_domain_that_does_not_resolve() -> None:
    assert judge_domain("a.test", [], "", set(), True, "a.test:443").severity is Severity.ERROR
    assert judge_domain("a.test", [], "", set(), False, "m:443").severity is Severity.WARNING
    failed = judge_domain("a.test", None, "timed out", set(), True, "a.test:443")
    assert failed.severity is Severity.ERROR and "timed out" in failed.message


def test_mask_flight_against_a_fixed_cert_size() -> None:
    assert judge_mask_flight("m:443", "TLSv1.3", 3000, None, 16, 100).severity is Severity.OK
    assert judge_mask_flight("m:443", "TLSv1.3", 3000, 3050, 16, 100).severity is Severity.OK
    far = judge_mask_flight("m:443", "TLSv1.3", 3000, 1200, 16, 100)
    assert far.severity is Severity.WARNING and "set cert_size to 3000" in far.fix
    assert judge_mask_flight("m:443", "TLSv1.2", 0, None, 16, 100).severity is Severity.WARNING


def test_dcs_some_or_all_failing() -> None:
    assert judge_dcs({"DC 1": None, "DC 2": None}, "directly").severity is Severity.OK
    assert judge_dcs({"DC 1": None, "DC 2": "timed out"}, "directly").severity is Severity.WARNING
    none = judge_dcs({"DC 1": "timed out", "DC 2": "network is unreachable"}, "directly")
    assert none.severity is Severity.ERROR and "DC 2: network is unreachable" in none.message


def test_port_owners() -> None:
    xray = Listener("127.0.0.1", 8443, 1, 4242, "xray", "/usr/local/bin/xray run -config /etc/xray.json")
    ours = Listener("0.0.0.0", 8443, 2, 5151, "python3", "python3 -m mtproxy.runtime --root /opt/vless")
    hidden = Listener("::", 8443, 3)
    taken = judge_port(8443, [xray], set(), None, 2053)
    assert taken.severity is Severity.ERROR and "xray (pid 4242) on 127.0.0.1" in taken.message
    assert "mtproxy set-port 2053" in taken.fix
    assert judge_port(8443, [ours], set(), True, None).severity is Severity.OK
    assert judge_port(8443, [ours], set(), False, None).severity is Severity.ERROR
    assert judge_port(8443, [hidden], set(), None, None).severity is Severity.WARNING
    assert judge_port(8443, [], set(), None, None).severity is Severity.ERROR


def test_proc_net_addresses() -> None:
    assert _address("0100007F") == "127.0.0.1"
    assert _address("00000000000000000000000001000000") == "::1"


@pytest.mark.netns
def test_listening_finds_a_real_socket_and_its_process() -> None:
    with socket.create_server(("127.0.0.3", 0)) as server:
        port = server.getsockname()[1]
        found = [x for x in listening(port) if x.address == "127.0.0.3"]
        assert len(found) == 1 and found[0].pid == os.getpid(), found
    assert not [x for x in listening(port) if x.address == "127.0.0.3"]
