"""The default mask behind HAProxy, read from the stack's config alone: where the frontend sends the proxy's
fake-TLS name today, and whether that backend's one server is a local site the engine can mask with."""

from __future__ import annotations

import pytest

from mtproxy.host import haproxy
from mtproxy.host.haproxy_sni import SniAcl, Unreadable, condition_matches, parse_acl

XRAY = {10443: "Xray inbound vless-reality"}

# A Reality-style stack: the VPN's own name to Xray, the site's names to a local nginx, the rest to Xray.
REALITY = """global
    log stdout format raw local0

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend vless_443
    bind :443
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    acl is_vpn req.ssl_sni -i vpn.example.com
    acl is_site req_ssl_sni -i www.example.com example.com
    acl is_site req.ssl_sni -m end .cdn.example.com
    use_backend xray if is_vpn
    use_backend site if is_site
    default_backend xray

backend xray
    server xray 127.0.0.1:10443

backend site
    server nginx 127.0.0.1:8443 check
"""


def mask(text: str, name: str, own_port: int = 8444) -> haproxy.MaskChoice:
    return haproxy.stack_mask(text, 443, name, XRAY, own_port)


def test_the_sites_own_name_gets_the_local_site() -> None:
    for name in ("www.example.com", "WWW.Example.com", "img.cdn.example.com"):
        found = mask(REALITY, name)
        assert found.target == "127.0.0.1:8443", (name, found.why)
        assert "backend site" in found.why and "line 18" in found.why


def test_the_default_to_xray_is_not_a_site() -> None:
    found = mask(REALITY, "other.example.net")
    assert found.target is None
    assert "default_backend" in found.why and "Xray inbound vless-reality" in found.why
    assert mask(REALITY, "vpn.example.com").target is None  # the VPN's own name goes to Xray, too
    assert mask(REALITY, "cdn.example.com").target is None  # `-m end .cdn…` is not the base itself


def test_the_default_backend_can_be_the_site() -> None:
    text = REALITY.replace("    default_backend xray", "    default_backend site")
    found = mask(text, "www.unknown.org")
    assert found.target == "127.0.0.1:8443" and "its default_backend" in found.why
    # without Xray's config the default cannot be told from Xray; an explicit SNI rule still can
    unknown = haproxy.stack_mask(text, 443, "www.unknown.org", {}, 8444)
    assert unknown.target is None and "may be Xray's" in unknown.why
    assert haproxy.stack_mask(text, 443, "www.example.com", {}, 8444).target == "127.0.0.1:8443"


def test_our_own_block_is_not_read() -> None:
    edited = haproxy.with_block(REALITY, ["www.example.com"], 8444, 443)
    assert mask(edited, "www.example.com").target == "127.0.0.1:8443"


@pytest.mark.parametrize(("server", "reason"), [
    ("server nginx 127.0.0.1:8443 send-proxy-v2", "expects a PROXY header (send-proxy-v2)"),
    ("server nginx 192.0.2.7:443", "not on this host's loopback"),
    ("server nginx nginx:443", "not on this host's loopback"),
    ("server nginx /run/nginx.sock", "is not HOST:PORT"),
    ("server nginx 127.0.0.1:8444", "this proxy's own port"),
    ("server nginx 127.0.0.1:8443\n    server backup 127.0.0.1:8445 backup", "2 servers, not one site"),
])
def test_servers_that_are_no_mask(server: str, reason: str) -> None:
    found = mask(REALITY.replace("server nginx 127.0.0.1:8443 check", server), "www.example.com")
    assert found.target is None and reason in found.why, found.why


def test_other_server_address_forms() -> None:
    for server, target in (("ipv4@127.0.0.2:9443", "127.0.0.2:9443"), ("[::1]:9443", "[::1]:9443"),
                           ("ipv6@::1:9443", "[::1]:9443"), ("localhost:9443", "localhost:9443")):
        text = REALITY.replace("127.0.0.1:8443 check", server)
        assert mask(text, "www.example.com").target == target, server


@pytest.mark.parametrize(("rule", "reason"), [
    ("use_backend site unless is_vpn", "only `if` conditions are read"),
    ("use_backend site if !is_vpn", "negation !is_vpn is not read"),
    ("use_backend site if { req.ssl_alpn h2 }", "does not match on req.ssl_sni"),
    ("use_backend site if { req.ssl_sni -m reg ^www }", "-m reg is not read"),
    ("use_backend site if { req.ssl_sni -f /etc/haproxy/sites.lst }", "flag -f is not read"),
    ("use_backend %[req.ssl_sni,lower,map(/etc/haproxy/sni.map)]", "computed at run time"),
])
def test_rules_that_are_not_read_stop_the_search(rule: str, reason: str) -> None:
    text = REALITY.replace("    use_backend xray if is_vpn", "    " + rule)
    found = mask(text, "www.example.com")
    assert found.target is None and "cannot tell where HAProxy sends www.example.com" in found.why
    assert reason in found.why, found.why


def test_an_unread_acl_stops_only_where_it_is_used() -> None:
    text = REALITY.replace("    acl is_vpn req.ssl_sni -i vpn.example.com", "    acl is_vpn src 192.0.2.0/24")
    assert "does not match on req.ssl_sni" in mask(text, "www.example.com").why
    unused = REALITY.replace("    acl is_vpn req.ssl_sni -i vpn.example.com",
                             "    acl is_vpn req.ssl_sni -i vpn.example.com\n    acl local src 127.0.0.1")
    assert mask(unused, "www.example.com").target == "127.0.0.1:8443"


def test_match_methods_as_haproxy_defines_them() -> None:
    assert parse_acl(["req.ssl_sni", "www.example.com"]) == SniAcl("str", ("www.example.com",), False)
    assert not parse_acl(["req.ssl_sni", "www.example.com"]).matches("WWW.example.com")  # no -i: case counts
    dom = parse_acl(["req.ssl_sni", "-m", "dom", "example.com"])
    assert dom.matches("a.example.com") and dom.matches("example.com") and not dom.matches("badexample.com")
    assert parse_acl(["req_ssl_sni", "-m", "beg", "www."]).matches("www.x.org")
    assert parse_acl(["req.ssl_sni", "-m", "sub", "ampl"]).matches("example.com")
    acls = {"a": [parse_acl(["req.ssl_sni", "-m", "end", ".example.com"])],
            "b": [parse_acl(["req.ssl_sni", "x.example.com"])]}
    assert condition_matches(["a", "b"], acls, "x.example.com")
    assert not condition_matches(["a", "b"], acls, "y.example.com")
    assert condition_matches(["b", "||", "{", "req.ssl_sni", "y.example.com", "}"], acls, "y.example.com")
    with pytest.raises(Unreadable, match="closing brace"):
        condition_matches(["{", "req.ssl_sni", "x"], acls, "x")


def test_no_frontend_or_no_route_is_a_reason_not_an_error() -> None:
    assert "no frontend" in haproxy.stack_mask(REALITY, 8443, "x.org", XRAY, 8444).why
    text = REALITY.replace("    default_backend xray\n", "")
    assert "no rule and no default_backend" in mask(text, "other.example.net").why
    assert "does not define" in mask(REALITY.replace("\nbackend site\n", "\nbackend web\n"), "www.example.com").why


def test_the_block_routes_every_name_under_the_base() -> None:
    edited = haproxy.with_block(REALITY, ["www.proxy.org", "k3f9q2ab.users.example.com"], 8444, 443,
                                "Users.Example.com")
    assert "use_backend mtproxy if { req.ssl_sni -i -m end .users.example.com }" in edited
    assert "k3f9q2ab" not in edited  # a name under the base needs no line of its own
    assert "use_backend mtproxy if { req.ssl_sni -i www.proxy.org }" in edited
    only_base = haproxy.with_block(REALITY, [], 8444, 443, "users.example.com")
    assert only_base.count("use_backend mtproxy") == 1
    with pytest.raises(haproxy.HaproxyError, match="no fake-TLS domain"):
        haproxy.with_block(REALITY, [], 8444, 443, None)
    assert haproxy.without_block(edited) == REALITY


def test_the_bound_address_is_listen_when_given() -> None:
    from mtproxy.settings import parse_settings

    behind = parse_settings({"port": 443, "listen": ["127.0.0.1:8444"]})
    assert (behind.port, behind.bound, behind.bound_port) == (443, [("127.0.0.1", 8444)], 8444)
    assert parse_settings({"port": 443, "listen": "[::1]:8445"}).bound == [("::1", 8445)]
    plain = parse_settings({"port": 8443})
    assert (plain.bound, plain.bound_port) == ([("", 8443)], 8443)
