"""The management API against the real aiohttp server on 127.0.0.1:0, through a real HTTP client (urllib).

Auth (401), read-only (403), every route, errors as JSON, the OpenAPI file against the served routes, the
`mtproxy api` command itself, and that the API and the CLI are one layer: what one changes the other sees.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mtproxy.api.app import PREFIX, ROUTES, build_app
from mtproxy.api.server import serve
from mtproxy.api.token import create_token, read_token
from mtproxy.cli.env import Env
from mtproxy.cli.errors import ExitStatus
from mtproxy.cli.secret_cmds import ops_of
from mtproxy.paths import Paths
from mtproxy.store import read_store

from .conftest import SRC, Result
from .test_live_apply import _wait_loaded, start_engine

Cli = Callable[..., Result]
SPEC = Path(__file__).resolve().parents[2] / "docs" / "api.openapi.json"

pytestmark = pytest.mark.netns


@dataclass
class Api:
    url: str
    token: str
    stop: Callable[[], None] = field(repr=False)

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             raw: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token if token is None else token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)


def start_api(env: Env, read_only: bool = False) -> Api:
    create_token(env.paths.api_token_file)
    token = read_token(env.paths.api_token_file)
    ops = ops_of(env)
    ops.actor = "api"
    box: dict[str, Any] = {}
    started = threading.Event()

    async def main() -> None:
        box["stop"], box["loop"] = asyncio.Event(), asyncio.get_running_loop()

        def ready(url: str) -> None:
            box["url"] = url
            started.set()

        await serve(ops, token, "127.0.0.1", 0, read_only, False, ready, box["stop"])

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "the API did not start"

    def stop() -> None:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)
        assert not thread.is_alive()

    return Api(box["url"], token, stop)


@pytest.fixture
def api(make_env: Callable[..., Env]) -> Iterator[Api]:
    server = start_api(make_env())
    yield server
    server.stop()


def _paths(route_path: str) -> str:
    return route_path.replace("{ref}", "alice")


def test_missing_or_wrong_token_is_401_on_every_route(api: Api, paths: Paths) -> None:
    for method, path, _ in ROUTES:
        for token in ("", "wrong-token-of-the-right-length-xxxxxxxxxxx", api.token + "x"):
            status, body, headers = api.call(method, _paths(path), {} if method != "GET" else None, token=token)
            assert status == 401, (method, path)
            assert body["error"]["kind"] == "unauthorized" and headers["WWW-Authenticate"].startswith("Bearer")
    assert not paths.secrets_file.exists()  # nothing ran


def test_read_only_refuses_every_change_and_still_reads(make_env: Callable[..., Env], cli: Cli,
                                                        paths: Paths) -> None:
    assert cli("add-secret", "--label", "alice").status == ExitStatus.OK
    before = paths.secrets_file.read_bytes()
    server = start_api(make_env(), read_only=True)
    try:
        for method, path, _ in ROUTES:
            status, body, _ = server.call(method, _paths(path), {} if method not in ("GET", "DELETE") else None)
            if method == "GET":
                assert status == 200, (path, body)
            else:
                assert status == 403 and body["error"]["kind"] == "read_only", (method, path)
        assert paths.secrets_file.read_bytes() == before
    finally:
        server.stop()


def test_every_route_does_what_the_spec_says(api: Api, paths: Paths) -> None:
    status, health, _ = api.call("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["store"]["secrets"] == 0
    status, made, _ = api.call("POST", "/secrets", {"label": "alice", "type": "dd", "limits": {
        "max_connections": 3, "quota": {"limit_bytes": 10**9, "period": "month"}}})
    assert status == 201, made
    secret = made["secret"]
    assert secret["label"] == "alice" and secret["created_by"] == "api" and secret["value"].startswith("dd")
    assert secret["links"]["tg"].startswith("tg://proxy?server=203.0.113.10")
    assert secret["limits"]["max_connections"] == 3 and secret["limits"]["quota"]["period"] == "month"
    sid = secret["id"]
    schema = json.loads(SPEC.read_text())["components"]["schemas"]["Secret"]
    assert set(schema["required"]) <= set(secret) <= set(schema["properties"])
    assert set(secret["limits"]) == set(json.loads(SPEC.read_text())["components"]["schemas"]["Limits"]["properties"])
    status, listing, _ = api.call("GET", "/secrets")
    assert status == 200 and [s["id"] for s in listing["secrets"]] == [sid]
    assert "value" not in listing["secrets"][0] and secret["value"] not in json.dumps(listing)
    for ref in (sid, "alice"):
        status, one, _ = api.call("GET", f"/secrets/{ref}")
        assert status == 200 and one["secret"]["id"] == sid
    status, patched, _ = api.call("PATCH", "/secrets/alice", {"label": "alice2", "limits": {
        "max_connections": None, "rate_limit": 1000, "expires_at": "2099-01-01T00:00:00Z"}})
    assert status == 200, patched
    limits = patched["secret"]["limits"]
    assert limits["max_connections"] is None and limits["rate_limit"] == 1000
    assert limits["quota"]["limit_bytes"] == 10**9  # not named in the patch: kept
    assert patched["secret"]["label"] == "alice2"
    status, off, _ = api.call("POST", "/secrets/alice2/disable")
    assert status == 200 and off["secret"]["active"] is False and off["secret"]["state"] == "disabled"
    status, on, _ = api.call("POST", "/secrets/alice2/enable")
    assert status == 200 and on["secret"]["active"] is True
    status, reset, _ = api.call("POST", "/secrets/alice2/reset-usage")
    assert status == 200 and reset["secret"]["usage_reset_at"]
    status, usage, _ = api.call("GET", "/secrets/alice2/usage")
    assert status == 200 and usage["usage"]["bytes_total"] == 0 and usage["limits"]["rate_limit"] == 1000
    status, fresh, _ = api.call("POST", "/secrets/alice2/regenerate")
    assert status == 200 and fresh["secret"]["value"] != secret["value"] and fresh["secret"]["id"] == sid
    status, reload_state, _ = api.call("GET", "/reload")
    assert status == 200 and reload_state["engine"] is False
    status, gone, _ = api.call("DELETE", "/secrets/alice2")
    assert status == 200 and gone["deleted"] == sid
    assert read_store(paths.secrets_file).secrets == ()


def test_errors_are_json_and_bad_input_changes_nothing(api: Api, paths: Paths) -> None:
    assert api.call("POST", "/secrets", {"label": "alice"})[0] == 201
    before = paths.secrets_file.read_bytes()
    cases = [
        ("GET", "/secrets/carol", None, 404, "not_found"),
        ("PATCH", "/secrets/alice", {"limits": {"max_connections": -1}}, 400, "invalid"),
        ("PATCH", "/secrets/alice", {"limits": {"quota": {"limit_bytes": 5, "timezone": "Mars/Base"}}}, 400,
         "invalid"),
        ("PATCH", "/secrets/alice", {"limits": {"speed": 1}}, 400, "invalid"),
        ("PATCH", "/secrets/alice", {"colour": "red"}, 400, "invalid"),
        ("POST", "/secrets", {"label": "alice"}, 409, "conflict"),
        ("POST", "/secrets", {"type": "ee", "domain": "not a domain"}, 400, "invalid"),
        ("POST", "/secrets", {"type": "xx"}, 400, "invalid"),
        ("POST", "/secrets", [1, 2], 400, "invalid"),
        ("GET", "/nothing-here", None, 404, "http"),
    ]
    for method, path, body, status, kind in cases:
        got, answer, _ = api.call(method, path, body)
        assert (got, answer["error"]["kind"]) == (status, kind), (method, path, answer)
        assert answer["error"]["message"]
    got, answer, _ = api.call("POST", "/secrets", raw=b"{not json")
    assert got == 400 and answer["error"]["message"] == "the request body is not JSON"
    assert paths.secrets_file.read_bytes() == before


def test_api_and_cli_are_one_layer(api: Api, cli: Cli, paths: Paths) -> None:
    """What the API changes, the CLI shows, and the other way round: the same store, the same operations."""
    api.call("POST", "/secrets", {"label": "alice", "limits": {"max_unique_ips": 2}})
    api.call("POST", "/secrets/alice/disable")
    listed = cli("list-secrets", "--json").json()["secrets"]
    assert [(s["label"], s["state"], s["limits"]["max_unique_ips"]) for s in listed] == [("alice", "disabled", 2)]
    assert cli("set-limits", "alice", "--quota", "5G", "--quota-period", "week").status == ExitStatus.OK
    assert cli("enable", "alice").status == ExitStatus.OK
    _, seen, _ = api.call("GET", "/secrets/alice")
    assert seen["secret"]["active"] is True
    assert seen["secret"]["limits"]["quota"] == {"limit_bytes": 5 * 2**30, "period": "week", "anchor_day": 1,
                                                 "timezone": "UTC"}
    # both report the same figures for the same secret (one view function)
    assert {k: v for k, v in seen["secret"].items() if k != "usage"} == {
        k: v for k, v in cli("list-secrets", "--json").json()["secrets"][0].items() if k != "usage"}


def test_the_openapi_file_lists_exactly_the_served_routes(make_env: Callable[..., Env]) -> None:
    spec = json.loads(SPEC.read_text())
    documented = {(method.upper(), path) for path, item in spec["paths"].items() for method in item
                  if method in ("get", "post", "patch", "delete", "put")}
    app = build_app(ops_of(make_env()), "t" * 32, False)
    served = {(route.method, route.resource.canonical.removeprefix(PREFIX))
              for route in app.router.routes() if route.method != "HEAD" and route.resource is not None}
    assert served == documented
    assert spec["servers"][0]["url"].endswith(PREFIX)
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "patch", "delete"):
                assert "401" in operation["responses"], (method, path)
                if method != "get":
                    assert "403" in operation["responses"], (method, path)


def test_token_file_must_be_private(tmp_path: Path) -> None:
    token = tmp_path / "api_token"
    assert create_token(token) is True and create_token(token) is False
    assert os.stat(token).st_mode & 0o777 == 0o600
    first = read_token(token)
    assert create_token(token, rotate=True) and read_token(token) != first
    os.chmod(token, 0o644)
    with pytest.raises(Exception, match="readable by other users"):
        read_token(token)


def test_the_api_command_serves_on_loopback_only_unless_forced(cli: Cli, paths: Paths) -> None:
    assert cli("api").status == ExitStatus.PERMISSION  # no token yet
    assert cli("api-token").status == ExitStatus.OK
    refused = cli("api", "--listen", "0.0.0.0")
    assert refused.status == ExitStatus.USAGE and "not a loopback address" in refused.err
    env = {**os.environ, "PYTHONPATH": SRC, "MTPROXY_ROOT": str(paths.root)}
    proc = subprocess.Popen([sys.executable, "-m", "mtproxy.cli.main", "api", "--port", "0", "--read-only"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready: management API on http://127.0.0.1:") and "(read-only)" in line
        url = line.split(" on ", 1)[1].split()[0]
        server = Api(url, read_token(paths.api_token_file), lambda: None)
        assert server.call("GET", "/health")[0] == 200
        assert server.call("POST", "/secrets", {})[0] == 403
        assert server.call("GET", "/health", token="nope")[0] == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and read_token(paths.api_token_file) not in err


def test_an_api_change_reaches_the_running_proxy_live(make_env: Callable[..., Env], cli: Cli, paths: Paths,
                                                      tmp_path: Path) -> None:
    engine = start_engine(cli, paths, tmp_path / "engine.log")
    server = start_api(make_env())
    try:
        status, made, _ = server.call("POST", "/secrets", {"label": "second"})
        assert status == 201 and made["proxy"]["live"] is True, made["proxy"]
        assert _wait_loaded(engine.stats_port, 2) == 2
        status, off, _ = server.call("POST", "/secrets/second/disable")
        assert off["proxy"]["live"] is True and _wait_loaded(engine.stats_port, 1) == 1
        _, reload_state, _ = server.call("GET", "/reload")
        assert reload_state["engine"] is True and reload_state["in_sync"] is True
        _, health, _ = server.call("GET", "/health")
        assert health["status"] == "ok" and health["engine"]["serves_store"] is True
    finally:
        server.stop()
        engine.stop()


def test_a_bug_is_a_json_500_without_the_request_in_the_log(api: Api, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    def boom(*_a: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr("mtproxy.api.app.get_secret", boom)
    secret_like = "dd" + "ab" * 16
    status, body, _ = api.call("GET", f"/secrets/{secret_like}")
    assert status == 500 and body["error"]["kind"] == "internal" and "kaboom" not in json.dumps(body)
    assert "kaboom" in caplog.text and secret_like not in caplog.text and "/secrets/{ref}" in caplog.text


@pytest.mark.parametrize(("settings", "flags", "body"), [
    ({}, [], {}),
    ({}, ["--plain"], {"type": "plain"}),
    ({}, ["--fake-tls", "cdn.example.org"], {"domain": "cdn.example.org"}),
    ({"domain": "www.example.com"}, [], {}),
    ({"domain": "www.example.com"}, ["--with-padding"], {"type": "dd"}),
    ({"domain": "www.example.com", "secret_domain_base": "users.example.com"}, ["--own-domain"],
     {"own_domain": True}),
    ({"domain": "www.example.com"}, ["--own-domain"], {"own_domain": True}),  # no base: refused by both
    ({}, ["--with-padding", "--fake-tls", "cdn.example.org"], {"type": "dd", "domain": "cdn.example.org"}),
])
def test_the_cli_and_the_api_choose_the_same_type(make_env: Callable[..., Env], cli: Cli, paths: Paths,
                                                  settings: dict[str, Any], flags: list[str],
                                                  body: dict[str, Any]) -> None:
    paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file.write_text(json.dumps({"version": 1, **settings}))
    by_cli = cli("add-secret", "--json", *flags)
    server = start_api(make_env())
    try:
        status, answer, _ = server.call("POST", "/secrets", body)
    finally:
        server.stop()
    if by_cli.status != ExitStatus.OK:
        assert by_cli.status == ExitStatus.USAGE and status == 400 and answer["error"]["kind"] == "invalid"
        assert not paths.secrets_file.exists() or read_store(paths.secrets_file).secrets == ()
        return
    assert status == 201, answer
    made, secret = by_cli.json(), answer["secret"]
    assert made["type"] == secret["type"]
    stored = read_store(paths.secrets_file).secrets
    assert [r.own_domain for r in stored] == [bool(body.get("own_domain"))] * 2
    if body.get("own_domain"):
        assert made["domain"] != secret["domain"]  # each its own name, under the one base
        assert made["domain"].endswith(".users.example.com") and secret["domain"].endswith(".users.example.com")
    else:
        assert made["domain"] == secret["domain"]
    warned = [n for n in made["notes"] if "allow_classic" in n]
    assert warned == [n for n in answer["notes"] if "allow_classic" in n]
    assert bool(warned) == (bool(settings.get("domain")) and made["type"] != "ee")


HAPROXY_STACK = """defaults
    mode tcp
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend vless_443
    bind :443
    default_backend xray
backend xray
    server xray 127.0.0.1:10443
"""


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="Debian's haproxy is not installed")
def test_api_changes_bring_the_haproxy_block_along(make_env: Callable[..., Env], paths: Paths,
                                                  tmp_path: Path) -> None:
    """Behind HAProxy (the install record says so) the API's secret changes take the one operations path
    that rewrites the block, checked by the real `haproxy -c`; a failed reload is a note, the secret stays."""
    from mtproxy.host import haproxy
    from mtproxy.host.layout import HostLayout
    from mtproxy.host.record import HaproxyRecord, InstallRecord
    from mtproxy.settings import update_settings

    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_STACK)
    update_settings(paths.settings_file, port=443, extra={"listen": ["127.0.0.1:8444"]},
                    secret_domain_base="users.example.com")
    check = ("haproxy", "-c", "-f", "{file}")
    record_file = HostLayout.resolve(paths.root).install_record
    record_file.parent.mkdir(parents=True, exist_ok=True)

    def record(reload: tuple[str, ...]) -> None:
        InstallRecord.new(paths, 8444, "none", "skip", "mtproxy:local", [], False, False, 8888,
                          HaproxyRecord(str(config), 443, check, reload)).save(record_file)

    record(("true",))
    server = start_api(make_env())
    try:
        status, made, _ = server.call("POST", "/secrets", {"label": "carol", "own_domain": True})
        assert status == 201 and made["notes"] == [], made
        text = config.read_text()
        assert "use_backend mtproxy if { req.ssl_sni -i -m end .users.example.com }" in text
        assert "127.0.0.1:8444 send-proxy-v2" in text
        status, _, _ = server.call("POST", "/secrets", {"label": "dave", "type": "ee",
                                                            "domain": "api.example.net"})
        assert status == 201 and "{ req.ssl_sni -i api.example.net }" in config.read_text()
        status, _, _ = server.call("DELETE", "/secrets/dave")
        assert status == 200 and "api.example.net" not in config.read_text()

        record(("false",))
        before = config.read_bytes()
        status, failed, _ = server.call("POST", "/secrets", {"label": "erin", "type": "ee",
                                                             "domain": "late.example.net"})
        assert status == 201
        assert any("HAProxy NOT updated: reloading HAProxy failed" in note and "mtproxy setup -n" in note
                   for note in failed["notes"]), failed["notes"]
        assert config.read_bytes() == before and haproxy.has_block(before.decode())
        assert "erin" in [rec.label for rec in read_store(paths.secrets_file).secrets]
    finally:
        server.stop()
