"""Start-up: the descriptor limit and what it holds, the generated link's address note, one-line errors."""

from __future__ import annotations

import errno
import io
import logging
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.config import resolve
from mtproxy.links import AddressGuess, ServerUnknownError
from mtproxy.paths import DEFAULT_ROOT
from mtproxy.protocol.secret import SecretKind, generate_secret
from mtproxy.runtime.engine import fit_connections, print_generated
from mtproxy.runtime.startup import (
    DESCRIPTORS_PER_CONNECTION,
    capacity_warning,
    connection_capacity,
    file_error,
    listen_error,
    raise_descriptor_limit,
    stats_error,
)

SECRET = generate_secret(bytes(range(16)), SecretKind.FAKE_TLS, "www.example.com")
USER = 54321


@pytest.fixture
def engine_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The engine's logger does not propagate once set up, so listen on it directly."""
    logger = logging.getLogger("mtproxy")
    propagate = logger.propagate
    logger.propagate = False
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="mtproxy")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip("needs a finite hard descriptor limit above 512")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_descriptor_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, hard), hard))


def test_capacity_and_the_warning_only_when_an_explicit_value_cannot_fit() -> None:
    assert connection_capacity(1024) == (1024 - 64) // DESCRIPTORS_PER_CONNECTION == 480
    assert connection_capacity(10) == 1
    assert capacity_warning(480, 1024) is None
    warning = capacity_warning(10000, 1024)
    assert warning is not None and "--max-connections 10000" in warning and "1024" in warning
    assert "LimitNOFILE" in warning


def _cfg(tmp_path: Path, *flags: str):  # type: ignore[no-untyped-def]
    return resolve(["--root", str(tmp_path / "root"), "-H", "8443", *flags], environ={})


def test_max_connections_defaults_to_what_the_limit_holds(tmp_path: Path, engine_log: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tmp_path)
    assert cfg.max_connections_auto
    fitted = fit_connections(cfg, 1024)
    assert fitted.limits.max_connections == 480
    assert fit_connections(cfg, 1 << 20).limits.max_connections == ((1 << 20) - 64) // 2
    assert engine_log.records == []


def test_an_explicit_max_connections_is_kept_and_warned_only_when_too_big(
    tmp_path: Path, engine_log: pytest.LogCaptureFixture
) -> None:
    small = _cfg(tmp_path, "--max-connections", "100")
    assert not small.max_connections_auto
    assert fit_connections(small, 1024).limits.max_connections == 100
    assert engine_log.records == []
    big = fit_connections(_cfg(tmp_path, "--max-connections", "5000"), 1024)
    assert big.limits.max_connections == 5000
    assert [r.levelname for r in engine_log.records] == ["WARNING"]
    assert "--max-connections 5000" in engine_log.records[0].getMessage()


def _no_route() -> AddressGuess:
    raise ServerUnknownError("no default route")


def test_a_link_without_a_known_address_says_so_and_how_to_set_it(tmp_path: Path) -> None:
    out = io.StringIO()
    print_generated(_cfg(tmp_path), SECRET, out, _no_route)
    text = out.getvalue()
    assert "tg://proxy?server=127.0.0.1&port=8443&secret=" in text
    note = [line for line in text.splitlines() if line.startswith("note:")]
    assert len(note) == 1
    assert "no public address" in note[0] and "127.0.0.1" in note[0]
    assert "--public-host HOST" in note[0] and "`mtproxy set-server HOST`" in note[0]


def test_a_private_guess_is_named_a_public_one_and_a_given_one_are_not(tmp_path: Path) -> None:
    out = io.StringIO()
    print_generated(_cfg(tmp_path), SECRET, out, lambda: AddressGuess("10.0.0.5", public=False))
    assert "server=10.0.0.5" in out.getvalue()
    assert "note: 10.0.0.5 is a private address" in out.getvalue() and "--public-host" in out.getvalue()
    for cfg, guess in ((_cfg(tmp_path), lambda: AddressGuess("198.51.100.7", public=True)),
                       (_cfg(tmp_path, "--public-host", "proxy.example.net"), _no_route)):
        out = io.StringIO()
        print_generated(cfg, SECRET, out, guess)
        assert "note:" not in out.getvalue()
        assert "server=198.51.100.7" in out.getvalue() or "server=proxy.example.net" in out.getvalue()


def test_file_errors_name_the_path_the_reason_and_the_fix() -> None:
    denied = file_error("keep the generated secret in /opt/vless/data/mtproxy/engine_state.json",
                        PermissionError(errno.EACCES, "Permission denied", "/opt/vless/data"))
    assert denied == ("cannot keep the generated secret in /opt/vless/data/mtproxy/engine_state.json"
                      " (/opt/vless/data): permission denied — run as the owner of that directory (or root),"
                      " or choose a place you can write with --root DIR (or MTPROXY_ROOT)")
    assert "\n" not in denied
    full = file_error("write the log file /x/y.log", OSError(errno.ENOSPC, "No space left on device", "/x/y.log"))
    assert full == "cannot write the log file /x/y.log: disk full — free some space and start again"


def test_network_errors_name_the_address_and_the_fix() -> None:
    in_use = listen_error(OSError(errno.EADDRINUSE, "cannot listen on 0.0.0.0:8443: Address already in use"))
    assert in_use.startswith("cannot listen on 0.0.0.0:8443: Address already in use — ") and "-H PORT" in in_use
    low = listen_error(OSError(errno.EACCES, "cannot listen on 0.0.0.0:443: Permission denied"))
    assert "CAP_NET_BIND_SERVICE" in low and "-H PORT" in low
    stats = stats_error("127.0.0.1:8888", OSError(errno.EADDRINUSE, "Address already in use"))
    assert stats.startswith("cannot serve stats on 127.0.0.1:8888: address already in use") and "-p 0" in stats


@pytest.mark.skipif((DEFAULT_ROOT / "mtproxy" / "install.json").exists(), reason="mtproxy is installed here")
def test_the_engine_uses_the_per_user_root_without_root_and_install(tmp_path: Path) -> None:
    home = tmp_path / "home"
    own = home / ".local" / "state" / "mtproxy"
    cfg = resolve(["-H", "8443"], environ={"HOME": str(home)}, euid=USER)
    assert cfg.state_file == own / "data" / "mtproxy" / "engine_state.json"
    assert cfg.root_note is not None and str(own) in cfg.root_note
    # Its settings file is the engine's too (the README test points the DCs at loopback through it).
    (own / "config" / "mtproxy").mkdir(parents=True)
    (own / "config" / "mtproxy" / "mtproxy_config.json").write_text('{"mask": "127.0.0.1:9"}')
    assert str(resolve([], environ={"HOME": str(home)}, euid=USER).mask) == "127.0.0.1:9"
    as_root = resolve([], environ={"HOME": str(home)}, euid=0)
    assert as_root.state_file == DEFAULT_ROOT / "data" / "mtproxy" / "engine_state.json"
    assert as_root.root_note is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_settings_directory_that_cannot_be_searched_is_a_one_line_error(tmp_path: Path) -> None:
    from mtproxy.config import ConfigError

    root = tmp_path / "root"
    (root / "config" / "mtproxy").mkdir(parents=True)
    (root / "config").chmod(0o700)
    tmp_path.chmod(0o755)
    os.seteuid(USER)
    try:
        with pytest.raises(ConfigError) as info:
            resolve(["--root", str(root)], environ={})
    finally:
        os.seteuid(0)
    message = str(info.value)
    assert str(root / "config" / "mtproxy" / "mtproxy_config.json") in message
    assert "permission denied" in message and "--root" in message and "\n" not in message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_settings_file_that_cannot_be_read_is_a_one_line_error(tmp_path: Path) -> None:
    from mtproxy.config import ConfigError

    settings = tmp_path / "settings.json"
    settings.write_text("{}")
    settings.chmod(0o600)
    tmp_path.chmod(0o755)
    os.seteuid(USER)
    try:
        with pytest.raises(ConfigError) as info:
            resolve(["--root", str(tmp_path), "--config", str(settings)], environ={})
    finally:
        os.seteuid(0)
    # the wording of the one settings reader (settings.read_settings), which the CLI commands print too
    assert str(info.value) == (f"{settings}: permission denied while reading — run as root or as the file's"
                               " owner, or choose another root with --root DIR")
