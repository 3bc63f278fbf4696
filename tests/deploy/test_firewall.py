"""UFW and fail2ban for real (ufw, iptables, fail2ban-server, the engine), each in its own namespaces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.netns
Scenario = Callable[[str], dict[str, Any]]


def test_ufw_rule_add_switch_remove(run_scenario: Scenario) -> None:
    r = run_scenario("ufw_rules")
    assert r["inactive_add"] is True and r["inactive_readd"] is False  # stored while inactive; idempotent
    assert r["inactive_rules"] == ["ufw limit 8443/tcp comment 'MTProxy'"]
    assert r["active"] is True
    assert "8443/tcp" in r["status"] and "LIMIT" in r["status"] and "# MTProxy" in r["status"]
    assert r["after_switch"] == ["ufw allow 8443/tcp comment 'MTProxy'"]
    assert "--dport 8443 -j ACCEPT" in r["iptables_allow"]
    assert r["remove"] is True and r["remove_again"] is False
    assert r["after_remove"] == []
    assert "8443" not in r["iptables_after_remove"]
    assert r["after_port_change"] == ["ufw limit 8444/tcp comment 'MTProxy'"]
    assert r["record_port"] == 8444
    assert r["operator_add"] is False and r["operator_remove"] is False
    assert r["operator_rules"] == ["ufw allow 9443/tcp"]


def test_ufw_rule_governs_the_port(run_scenario: Scenario) -> None:
    """With UFW on, the port is closed without our rule; `limit` lets 5 new connections from one address
    through in 30 s and refuses the rest (other addresses unaffected); `allow` lets all through."""
    r = run_scenario("ufw_traffic")
    assert r["ufw_off"] == ["ok", "ok"]
    assert r["no_rule"] == ["timeout"]  # default deny incoming: dropped
    assert r["limit_a"] == ["ok"] * 5 + ["refused"] * 3
    assert r["limit_b"] == ["ok"]
    assert r["allow_b"] == ["ok"] * 12
    assert r["removed"] == ["timeout"]


def test_fail2ban_bans_the_address_that_sent_bad_handshakes(run_scenario: Scenario) -> None:
    """The engine's 5 rejected-handshake lines from A make the shipped jail ban A (REJECT on the proxy
    port); B's real proxied session works before and after."""
    r = run_scenario("fail2ban_ban")
    assert "File list:" in r["jail_status"]
    assert r["b_before"] == "ok"
    assert r["a_bad"] == ["ok"] * 5
    assert r["log"].count("rejected handshake from 10.213.0.3 ") == 5
    assert "10.213.0.2" not in r["log"]
    assert r["banned"] == ["10.213.0.3"]
    assert r["a_after"] == ["refused"]
    assert r["b_after"] == "ok"
    assert "-A f2b-mtproxy -s 10.213.0.3/32 -j REJECT" in r["iptables"]
