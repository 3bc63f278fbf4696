"""add-secret, list-secrets, remove-secret, regenerate-secret and show-config in a temp root, good and bad input."""

from __future__ import annotations

import io
import json
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from mtproxy.cli.errors import ExitStatus
from mtproxy.paths import Paths
from mtproxy.protocol.secret import SecretKind, parse_secret
from mtproxy.store import read_store

from .conftest import SERVER, Result

Cli = Callable[..., Result]


def _store(paths: Paths) -> dict:  # type: ignore[type-arg]
    return json.loads(paths.secrets_file.read_text())


def _write_settings(paths: Paths, **values: object) -> None:
    paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file.write_text(json.dumps({"version": 1, **values}))


def test_add_secret_default_is_dd_and_prints_links_and_qr(cli: Cli, paths: Paths) -> None:
    result = cli("add-secret", "--label", "phones", "--description", "family phones")
    assert result.status == ExitStatus.OK, result.err
    doc = _store(paths)
    (entry,) = doc["secrets"]
    assert entry["type"] == "dd" and entry["padding_enabled"] is True
    assert len(entry["value"]) == 34 and entry["value"].startswith("dd")  # the plan's dd form
    assert entry["label"] == "phones" and entry["description"] == "family phones" and entry["active"] is True
    assert entry["created_at"].endswith("Z") and entry["created_by"].startswith("cli:")
    assert stat.S_IMODE(paths.secrets_file.stat().st_mode) == 0o600
    link = f"tg://proxy?server={SERVER}&port=8443&secret={entry['value']}"
    assert link in result.out
    assert f"https://t.me/proxy?server={SERVER}&port=8443&secret={entry['value']}" in result.out
    png = paths.secret_dir(entry["id"]) / "qr.png"
    assert str(png) in result.out
    assert png.read_bytes().startswith(b"\x89PNG")
    assert (paths.secret_dir(entry["id"]) / "qr.svg").read_bytes().lstrip().startswith(b"<?xml")
    assert paths.default_link_file.read_text().splitlines()[0] == link
    assert paths.default_qr_png.exists()
    for produced in (png, paths.default_link_file, paths.default_qr_png):
        assert stat.S_IMODE(produced.stat().st_mode) == 0o600  # they carry the secret
    assert "no proxy is running" in result.out


def test_add_secret_default_is_ee_when_a_domain_is_configured(cli: Cli, paths: Paths) -> None:
    _write_settings(paths, domain="www.example.com", port=2053)
    result = cli("add-secret")
    assert result.status == ExitStatus.OK, result.err
    entry = _store(paths)["secrets"][0]
    assert entry["type"] == "ee" and entry["domain"] == "www.example.com"
    assert entry["value"] == "ee" + parse_secret(entry["value"]).key.hex() + b"www.example.com".hex()
    assert f"port=2053&secret={entry['value']}" in result.out


@pytest.mark.parametrize(
    ("flags", "kind", "length"),
    [(["--plain"], SecretKind.CLASSIC, 32), (["--with-padding"], SecretKind.PADDED, 34),
     (["--fake-tls", "cdn.example.org"], SecretKind.FAKE_TLS, 34 + 2 * len("cdn.example.org"))],
)
def test_add_secret_types(cli: Cli, paths: Paths, flags: list[str], kind: SecretKind, length: int) -> None:
    assert cli("add-secret", *flags).status == ExitStatus.OK
    value = _store(paths)["secrets"][0]["value"]
    assert len(value) == length
    assert parse_secret(value).kind is kind


def test_add_secret_bad_input(cli: Cli, paths: Paths) -> None:
    bad_domain = cli("add-secret", "--fake-tls", "not a domain")
    assert bad_domain.status == ExitStatus.USAGE
    assert bad_domain.err.startswith("mtproxy: --fake-tls") and " — " in bad_domain.err
    assert cli("add-secret", "--plain", "--fake-tls", "www.example.com").status == ExitStatus.USAGE
    assert cli("add-secret", "--label", "phones").status == ExitStatus.OK
    taken = cli("add-secret", "--label", "phones")
    assert taken.status == ExitStatus.CONFLICT and "already used" in taken.err
    looks_secret = cli("add-secret", "--label", "00" * 16)
    assert looks_secret.status == ExitStatus.USAGE
    assert len(_store(paths)["secrets"]) == 1
    assert "Traceback" not in bad_domain.err + taken.err + looks_secret.err


def test_list_secrets_masks_values(cli: Cli, paths: Paths) -> None:
    cli("add-secret", "--label", "a")
    cli("add-secret", "--plain", "--label", "b")
    values = [e["value"] for e in _store(paths)["secrets"]]
    table = cli("list-secrets")
    assert table.status == ExitStatus.OK
    assert table.out.splitlines()[0].split() == ["ID", "LABEL", "SECRET", "TYPE", "DOMAIN", "CREATED", "ACTIVE",
                                                 "STATE", "LIMITS", "USAGE", "AD", "TAG"]
    for value in values:
        secret = parse_secret(value)
        assert secret.key.hex() not in table.out
        assert secret.masked() in table.out
    listing = cli("list-secrets", "--json").json()
    assert listing["kind"] == "secrets" and listing["version"] == 1
    assert [s["label"] for s in listing["secrets"]] == ["a", "b"]
    assert all("value" not in s for s in listing["secrets"])
    assert all(parse_secret(v).key.hex() not in json.dumps(listing) for v in values)


def test_list_secrets_empty_store(cli: Cli) -> None:
    result = cli("list-secrets")
    assert result.status == ExitStatus.OK and "add-secret" in result.out
    assert cli("list-secrets", "--json").json()["secrets"] == []


def test_remove_secret_by_id_label_and_value(cli: Cli, paths: Paths) -> None:
    for label in ("a", "b", "c", "d"):
        cli("add-secret", "--label", label)
    entries = _store(paths)["secrets"]
    assert cli("remove-secret", entries[0]["id"]).status == ExitStatus.OK
    assert cli("remove-secret", "b").status == ExitStatus.OK
    removed = cli("remove-secret", entries[2]["value"])
    assert removed.status == ExitStatus.OK
    assert entries[2]["value"] not in removed.out + removed.err  # the masked form only
    assert [e["label"] for e in _store(paths)["secrets"]] == ["d"]
    assert not paths.secret_dir(entries[0]["id"]).exists()  # its link and QR files went with it


def test_remove_unknown_secret(cli: Cli, paths: Paths) -> None:
    cli("add-secret", "--label", "a")
    before = paths.secrets_file.read_bytes()
    result = cli("remove-secret", "nobody")
    assert result.status == ExitStatus.NOT_FOUND
    assert result.err == "mtproxy: no secret matches 'nobody' — see `mtproxy list-secrets` for ids and labels\n"
    secret_like = "dd" + "ab" * 16
    result = cli("remove-secret", secret_like)
    assert result.status == ExitStatus.NOT_FOUND and secret_like not in result.err
    assert paths.secrets_file.read_bytes() == before


def test_remove_last_active_secret_asks_and_refuses_without_terminal(cli: Cli, paths: Paths) -> None:
    cli("add-secret", "--label", "only")
    refused = cli("remove-secret", "only")
    assert refused.status == ExitStatus.CONFLICT
    assert "refusing to ask without a terminal" in refused.err and "--yes" in refused.err
    assert len(_store(paths)["secrets"]) == 1
    dry = cli("remove-secret", "only", "--dry-run")
    assert dry.status == ExitStatus.OK and "would remove" in dry.out
    assert len(_store(paths)["secrets"]) == 1
    assert cli("remove-secret", "only", "--yes").status == ExitStatus.OK
    assert _store(paths)["secrets"] == []
    assert not paths.default_link_file.exists()


def test_remove_last_active_secret_prompt_on_a_terminal(
    cli: Cli, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("add-secret", "--label", "only")
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    declined = cli("remove-secret", "only", interactive=True)
    assert declined.status == ExitStatus.FAILURE and "cancelled" in declined.err
    assert len(_store(paths)["secrets"]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert cli("remove-secret", "only", interactive=True).status == ExitStatus.OK
    assert _store(paths)["secrets"] == []


def test_regenerate_keeps_id_label_type_and_domain(cli: Cli, paths: Paths) -> None:
    cli("add-secret", "--fake-tls", "www.example.com", "--label", "phones")
    cli("add-secret", "--label", "other")
    old = _store(paths)["secrets"][0]
    result = cli("regenerate-secret", "phones", "--yes")
    assert result.status == ExitStatus.OK, result.err
    new = _store(paths)["secrets"][0]
    assert (new["id"], new["label"], new["type"], new["domain"]) == (old["id"], "phones", "ee", "www.example.com")
    assert new["value"] != old["value"]
    assert f"secret={new['value']}" in result.out
    assert (paths.secret_dir(new["id"]) / "link.txt").read_text().count(new["value"]) == 2
    assert cli("regenerate-secret", "nobody", "--yes").status == ExitStatus.NOT_FOUND
    assert cli("regenerate-secret", "phones").status == ExitStatus.CONFLICT  # no terminal, no --yes


def test_show_config_all_and_one(cli: Cli, paths: Paths) -> None:
    cli("add-secret", "--label", "a")
    cli("add-secret", "--label", "b", "--plain")
    entries = _store(paths)["secrets"]
    everything = cli("show-config")
    assert everything.status == ExitStatus.OK
    for entry in entries:
        assert f"tg://proxy?server={SERVER}&port=8443&secret={entry['value']}" in everything.out
        assert str(paths.secret_dir(entry["id"]) / "qr.png") in everything.out
    assert "█" in everything.out  # the QR code drawn in the terminal
    one = cli("show-config", "b", "--no-qr", "--json").json()
    assert [s["label"] for s in one["secrets"]] == ["b"]
    assert one["secrets"][0]["https"].startswith(f"https://t.me/proxy?server={SERVER}&port=8443&secret=")
    assert cli("show-config", "zzz").status == ExitStatus.NOT_FOUND


def test_show_config_without_any_server_address_says_what_to_do(cli: Cli, paths: Paths) -> None:
    # Inside `unshare -n` there is no default route, so nothing can be guessed.
    cli("add-secret", "--label", "a")
    result = cli("show-config", server_override=None)
    if result.status == ExitStatus.OK:
        pytest.skip("this machine has a default route, so the address was guessed")
    assert result.status == ExitStatus.UNAVAILABLE
    assert "set-server" in result.err


@pytest.mark.parametrize(
    "args",
    [["add-secret"], ["list-secrets"], ["remove-secret", "x", "--yes"], ["regenerate-secret", "x", "--yes"],
     ["show-config"]],
)
def test_malformed_store_is_reported_and_left_untouched(cli: Cli, paths: Paths, args: list[str]) -> None:
    paths.secrets_file.parent.mkdir(parents=True)
    paths.secrets_file.write_text('{"secrets": [ {"id": "x", ')
    before = paths.secrets_file.read_bytes()
    result = cli(*args)
    assert result.status == ExitStatus.DATA
    assert result.err.startswith(f"mtproxy: {paths.secrets_file}: not valid JSON")
    assert "left untouched" in result.err and result.err.count("\n") == 1
    assert paths.secrets_file.read_bytes() == before


def test_store_from_another_version_is_refused(cli: Cli, paths: Paths) -> None:
    paths.secrets_file.parent.mkdir(parents=True)
    paths.secrets_file.write_text('{"secrets": [], "metadata": {"version": 7}}')
    result = cli("add-secret")
    assert result.status == ExitStatus.DATA and "newer mtproxy" in result.err


def test_dry_run_changes_nothing(cli: Cli, paths: Paths) -> None:
    result = cli("--dry-run", "add-secret")
    assert result.status == ExitStatus.OK
    assert not paths.secrets_file.exists()
    assert read_store(paths.secrets_file).secrets == ()


def test_debug_is_the_only_way_to_a_traceback(cli: Cli, paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr("mtproxy.operations.secrets.read_store", boom)
    quiet = cli("list-secrets")
    assert quiet.status == ExitStatus.FAILURE
    assert quiet.err == "mtproxy: internal error: RuntimeError: kaboom — rerun with --debug and report the traceback\n"
    loud = cli("--debug", "list-secrets")
    assert "Traceback" in loud.err and "kaboom" in loud.err


def test_every_command_has_help_with_examples(cli: Cli) -> None:
    for command in ("add-secret", "list-secrets", "remove-secret", "regenerate-secret", "show-config",
                    "set-port", "set-workers", "set-server", "set-secret-domain-base", "stats", "status",
                    "completion", "set-limits", "enable", "disable", "extend", "reset-usage", "set-ad-tag", "api",
                    "api-token"):
        result = cli(command, "--help")
        assert result.status == ExitStatus.OK
        assert "Examples:" in result.out, command
    top = cli("--help")
    assert "Examples:" in top.out and "completion" in top.out


def test_unknown_command_and_option_are_usage_errors(cli: Cli) -> None:
    result = cli("frobnicate")
    assert result.status == ExitStatus.USAGE and result.err.startswith("mtproxy: ")
    result = cli("list-secrets", "--frob")
    assert result.status == ExitStatus.USAGE and "mtproxy list-secrets --help" in result.err


def test_file_path_helpers_stay_under_root(paths: Paths, tmp_path: Path) -> None:
    for p in (paths.secrets_file, paths.settings_file, paths.data_dir, paths.logs_dir, paths.secret_dir("x")):
        assert p.is_relative_to(tmp_path / "root")


def test_add_and_regenerate_json(cli: Cli, paths: Paths) -> None:
    added = cli("add-secret", "--label", "bot", "--json").json()
    assert added["kind"] == "secret" and added["version"] == 1 and added["label"] == "bot"
    assert added["tg"] == f"tg://proxy?server={SERVER}&port=8443&secret={added['secret']}"
    assert Path(added["qr_png"]).exists() and added["proxy"]["live"] is False
    again = cli("regenerate-secret", "bot", "--yes", "--json").json()
    assert again["id"] == added["id"] and again["secret"] != added["secret"]
    assert _store(paths)["secrets"][0]["value"] == again["secret"]


def test_classic_secret_with_a_fake_tls_only_proxy_is_warned_about(cli: Cli, paths: Paths) -> None:
    _write_settings(paths, domain="www.example.com")
    warned = cli("add-secret", "--plain")
    assert warned.status == ExitStatus.OK and "only ee clients" in warned.err
    _write_settings(paths, domain="www.example.com", allow_classic=True)
    assert "only ee clients" not in cli("add-secret", "--with-padding").err


OWN_NAME = re.compile(r"^[a-z][a-z0-9]{7}\.users\.example\.com$")


def test_own_domain_secrets_get_distinct_host_names_shown_in_listings_and_links(cli: Cli, paths: Paths) -> None:
    _write_settings(paths, domain="www.example.com")
    refused = cli("add-secret", "--own-domain")
    assert refused.status == ExitStatus.USAGE and "set-secret-domain-base" in refused.err
    assert not paths.secrets_file.exists()
    assert cli("set-secret-domain-base", "users.example.com").status == ExitStatus.OK
    made = [cli("add-secret", "--own-domain", "--label", name, "--json").json() for name in ("alice", "bob")]
    entries = _store(paths)["secrets"]
    assert [e["own_domain"] for e in entries] == [True, True]
    domains = [e["domain"] for e in entries]
    assert all(OWN_NAME.match(d) for d in domains) and domains[0] != domains[1]
    for entry, answer in zip(entries, made, strict=True):
        assert answer["domain"] == entry["domain"] and answer["type"] == "ee"
        assert parse_secret(entry["value"]).domain == entry["domain"]  # the link's secret carries it
        assert answer["tg"].endswith(f"secret={entry['value']}")
    listing = cli("list-secrets", "--json").json()["secrets"]
    assert [(s["domain"], s["own_domain"]) for s in listing] == [(d, True) for d in domains]
    table = cli("list-secrets").out
    assert all(d in table for d in domains)
    shown = cli("show-config", "alice", "--no-qr", "--json").json()
    assert entries[0]["value"] in json.dumps(shown)
    # the shared domain stays the default
    plain_default = cli("add-secret", "--json").json()
    assert plain_default["domain"] == "www.example.com"
    assert "own_domain" not in _store(paths)["secrets"][-1]


def test_regenerate_draws_a_new_own_host_name_under_the_same_base(cli: Cli, paths: Paths) -> None:
    _write_settings(paths, secret_domain_base="users.example.com")
    cli("add-secret", "--own-domain", "--label", "alice")
    before = _store(paths)["secrets"][0]
    cli("set-secret-domain-base", "other.example.net")  # the record's own base is kept, not the new setting
    assert cli("regenerate-secret", "alice", "--yes").status == ExitStatus.OK
    after = _store(paths)["secrets"][0]
    assert after["own_domain"] is True and OWN_NAME.match(after["domain"])
    assert after["domain"] != before["domain"] and after["value"] != before["value"]
    assert parse_secret(after["value"]).domain == after["domain"]


@pytest.mark.parametrize("flags", [["--own-domain", "--plain"], ["--own-domain", "--fake-tls", "www.example.org"],
                                   ["--with-padding", "--fake-tls", "www.example.org"]])
def test_own_domain_and_other_types_do_not_mix(cli: Cli, paths: Paths, flags: list[str]) -> None:
    _write_settings(paths, secret_domain_base="users.example.com")
    result = cli("add-secret", *flags)
    assert result.status == ExitStatus.USAGE and "give one" in result.err
    assert not paths.secrets_file.exists()
