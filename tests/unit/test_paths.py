"""Which root a command uses: --root, MTPROXY_ROOT, the installed system, or a per-user root; and what it says."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mtproxy.paths import Paths, choose_root, user_root

USER = 54321  # any uid that is not root


@pytest.fixture
def system(tmp_path: Path) -> Path:
    root = tmp_path / "opt-vless"
    root.mkdir()
    return root


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home)}


def install(system: Path) -> Path:
    record = system / "mtproxy" / "install.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"port": 8443, "manager": "docker", "ufw_mode": "allow", "image": "mtproxy:local"}')
    return record


def test_per_user_root_follows_xdg_state_home(tmp_path: Path) -> None:
    assert user_root({"HOME": "/home/ann"}) == Path("/home/ann/.local/state/mtproxy")
    assert user_root({"HOME": "/home/ann", "XDG_STATE_HOME": "/srv/state"}) == Path("/srv/state/mtproxy")
    # The XDG spec: a relative value is invalid and ignored.
    assert user_root({"HOME": "/home/ann", "XDG_STATE_HOME": "rel"}) == Path("/home/ann/.local/state/mtproxy")


def test_flag_then_environment_win_over_everything(system: Path, environ: dict[str, str]) -> None:
    install(system)
    env = {**environ, "MTPROXY_ROOT": "/srv/env-root"}
    assert choose_root("/srv/flag-root", env, USER, system).paths == Paths(Path("/srv/flag-root"))
    assert choose_root(None, env, USER, system).paths == Paths(Path("/srv/env-root"))
    assert choose_root(None, env, USER, system).note is None


def test_root_uses_the_system_root_even_with_nothing_installed(system: Path, environ: dict[str, str]) -> None:
    choice = choose_root(None, environ, 0, system)
    assert choice.paths == Paths(system) and choice.note is None


def test_without_root_and_install_a_per_user_root_said_once(system: Path, environ: dict[str, str]) -> None:
    choice = choose_root(None, environ, USER, system)
    mine = Path(environ["HOME"]) / ".local" / "state" / "mtproxy"
    assert choice.paths == Paths(mine)
    assert choice.note is not None and str(mine) in choice.note and str(system) in choice.note
    assert "--root" in choice.note
    # Only settings so far (e.g. written by hand): still nothing kept, still worth saying.
    choice.paths.settings_file.parent.mkdir(parents=True)
    choice.paths.settings_file.write_text("{}")
    assert choose_root(None, environ, USER, system).note is not None
    # Once a secret is kept there, it is simply used.
    choice.paths.secrets_file.write_text("")
    again = choose_root(None, environ, USER, system)
    assert again.paths == Paths(mine) and again.note is None


def test_a_readable_install_is_used_and_both_found_are_named(system: Path, environ: dict[str, str]) -> None:
    install(system)
    choice = choose_root(None, environ, USER, system)
    assert choice.paths == Paths(system) and choice.note is None
    mine_root = user_root(environ)
    assert mine_root is not None
    mine = Paths(mine_root)
    mine.data_dir.mkdir(parents=True)
    mine.engine_state_file.write_text("{}")
    both = choose_root(None, environ, USER, system)
    assert both.paths == Paths(system)
    assert both.note is not None
    assert f"using the installation at {system}" in both.note and str(mine.root) in both.note


@contextmanager
def as_user(uid: int) -> Iterator[None]:
    """Drop the effective uid (the real one stays root, so it can be taken back)."""
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file unreadable to another user")
def test_an_unreadable_install_is_named_and_the_per_user_root_used(system: Path, environ: dict[str, str]) -> None:
    record = install(system)
    record.chmod(0o600)
    with as_user(USER):
        choice = choose_root(None, environ, USER, system)
    assert choice.paths == Paths(user_root(environ))
    assert choice.note is not None
    assert str(record) in choice.note and "not readable" in choice.note and "sudo" in choice.note


def test_a_record_that_is_no_file_is_not_taken_for_an_install(system: Path, environ: dict[str, str]) -> None:
    (system / "mtproxy" / "install.json").mkdir(parents=True)
    choice = choose_root(None, environ, USER, system)
    assert choice.paths == Paths(Path(environ["HOME"]) / ".local" / "state" / "mtproxy")
    assert choice.note is not None and "unreadable" in choice.note


def test_without_a_home_the_system_root_is_used_and_said(system: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert user_root({}) is None
    choice = choose_root(None, {}, USER, system)
    assert choice.paths == Paths(system)
    assert choice.note is not None and "set HOME" in choice.note and "--root DIR" in choice.note
