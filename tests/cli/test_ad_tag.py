"""Per-secret ad tags: `mtproxy set-ad-tag` and the API's PUT/DELETE /secrets/{ref}/ad-tag share one
operation; what they write, what they refuse, what list-secrets shows, and what the engine's set carries."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from mtproxy.cli.env import Env
from mtproxy.cli.errors import ExitStatus
from mtproxy.config import resolve
from mtproxy.paths import Paths
from mtproxy.runtime.secrets import load_secret_set

from .conftest import Result, stored_entry
from .test_api import Api, start_api

Cli = Callable[..., Result]
TAG = "0123456789ABCDEF0123456789abcdef"


@pytest.mark.usefixtures("two")
def test_set_show_and_clear(cli: Cli, paths: Paths) -> None:
    done = cli("set-ad-tag", "alice", TAG)
    assert done.status == ExitStatus.OK, done.err
    assert "set the ad tag of alice" in done.out and f"ad tag:  {TAG.lower()}" in done.out
    assert stored_entry(paths, "alice")["ad_tag"] == TAG.lower() and "ad_tag" not in stored_entry(paths, "bob")
    listing = cli("list-secrets", "--json").json()["secrets"]
    assert [(s["label"], s["ad_tag"]) for s in listing] == [("alice", TAG.lower()), ("bob", None)]
    table = cli("list-secrets").out
    assert "AD TAG" in table and TAG.lower() in table
    cleared = cli("set-ad-tag", "alice", "--clear", "--json").json()
    assert cleared["kind"] == "secret-ad-tag" and cleared["ad_tag"] is None
    assert "ad_tag" not in stored_entry(paths, "alice")


@pytest.mark.usefixtures("two")
@pytest.mark.parametrize(("args", "status", "problem"), [
    (["alice", "0123"], ExitStatus.USAGE, "exactly 32 hex digits (from @MTProxybot), got 4 characters"),
    (["alice", "g" * 32], ExitStatus.USAGE, "character 1 ('g') is not one"),
    (["alice"], ExitStatus.USAGE, "give a TAG, or --clear"),
    (["alice", TAG, "--clear"], ExitStatus.USAGE, "give a TAG, or --clear"),
    (["carol", TAG], ExitStatus.NOT_FOUND, "carol"),
])
def test_bad_input_is_refused_and_changes_nothing(cli: Cli, paths: Paths, args: list[str], status: ExitStatus,
                                                  problem: str) -> None:
    before = paths.secrets_file.read_bytes()
    result = cli("set-ad-tag", *args)
    assert result.status == status and problem in result.err, result.err
    assert paths.secrets_file.read_bytes() == before


@pytest.mark.usefixtures("two")
def test_dry_run_changes_nothing(cli: Cli, paths: Paths) -> None:
    before = paths.secrets_file.read_bytes()
    result = cli("--dry-run", "set-ad-tag", "alice", TAG)
    assert result.status == ExitStatus.OK and "would set the ad tag of alice" in result.out
    assert paths.secrets_file.read_bytes() == before


@pytest.mark.usefixtures("two")
def test_the_engine_set_carries_each_secrets_tag_over_the_global_one(cli: Cli, paths: Paths) -> None:
    assert cli("set-ad-tag", "bob", TAG).status == ExitStatus.OK
    global_tag = "ab" * 16
    cfg = resolve(["--secrets-file", str(paths.secrets_file), "-P", global_tag, "--root", str(paths.root)],
                  environ={})
    assert cfg.proxy_tag == bytes.fromhex(global_tag)
    secrets = load_secret_set(cfg, cfg.secrets_file, [])
    ids = {rec["label"]: rec["id"] for rec in json.loads(paths.secrets_file.read_text())["secrets"]}
    assert secrets.ad_tag_for(ids["bob"], cfg.proxy_tag) == bytes.fromhex(TAG)
    assert secrets.ad_tag_for(ids["alice"], cfg.proxy_tag) == bytes.fromhex(global_tag)
    assert secrets.ad_tag_for(ids["alice"], None) is None


@pytest.fixture
def api(make_env: Callable[..., Env]) -> Iterator[Api]:
    server = start_api(make_env())
    yield server
    server.stop()


@pytest.mark.netns
def test_api_sets_and_clears_through_the_same_rule(api: Api, paths: Paths) -> None:
    assert api.call("POST", "/secrets", {"label": "alice"})[0] == 201
    status, set_, _ = api.call("PUT", "/secrets/alice/ad-tag", {"ad_tag": TAG})
    assert status == 200 and set_["secret"]["ad_tag"] == TAG.lower(), set_
    assert stored_entry(paths, "alice")["ad_tag"] == TAG.lower()
    status, one, _ = api.call("GET", "/secrets/alice")
    assert status == 200 and one["secret"]["ad_tag"] == TAG.lower()
    before = paths.secrets_file.read_bytes()
    for body in ({"ad_tag": "xyz"}, {}, {"ad_tag": TAG, "other": 1}, {"ad_tag": 5}):
        status, error, _ = api.call("PUT", "/secrets/alice/ad-tag", body)
        assert status == 400 and error["error"], (body, error)
    assert paths.secrets_file.read_bytes() == before
    assert api.call("PUT", "/secrets/carol/ad-tag", {"ad_tag": TAG})[0] == 404
    status, cleared, _ = api.call("DELETE", "/secrets/alice/ad-tag")
    assert status == 200 and cleared["secret"]["ad_tag"] is None
    assert "ad_tag" not in stored_entry(paths, "alice")
