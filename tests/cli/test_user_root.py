"""The operator commands as an ordinary user: a per-user root said once, an installed system preferred,
and a command that finds both saying which one it uses. /opt/vless is a tmpfs of the test's own mount
namespace, so the host's is never read or written."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.paths import Paths
from mtproxy.store import read_store

from ..unprivileged import UserSandbox, missing_tools
from .conftest import SERVER, SRC

RECORD = {"port": 8443, "manager": "docker", "ufw_mode": "allow", "image": "mtproxy:local"}


@pytest.fixture
def sandbox() -> Iterator[UserSandbox]:
    why = missing_tools()
    if why is not None:
        pytest.skip(why)
    if not Path("/opt").is_dir():
        pytest.skip("no /opt to cover with a private tmpfs")
    box = UserSandbox.create()
    yield box
    box.remove()


def installed(mode: str) -> str:
    """Root's part, in the private mount namespace: an installation at /opt/vless with its record."""
    record = shlex.quote(json.dumps(RECORD))
    return (f"mount -t tmpfs -o mode=755 tmpfs /opt && mkdir -p /opt/vless/mtproxy && echo {record} >"
            f" /opt/vless/mtproxy/install.json && chmod {mode} /opt/vless/mtproxy/install.json")


NOTHING_INSTALLED = "mount -t tmpfs -o mode=755 tmpfs /opt"


def mtproxy(sandbox: UserSandbox, *args: str, system: str = NOTHING_INSTALLED) -> tuple[int, str, str]:
    process = sandbox.start(f'exec {sandbox.python} -m mtproxy.cli.main "$@"', "--server", SERVER, *args,
                            env={"PYTHONPATH": SRC}, as_root_first=system)
    with process:  # closes its pipes even when communicate times out
        try:
            out, err = process.communicate(timeout=60)
        finally:
            UserSandbox.stop(process)
    return process.returncode, out, err


def own(sandbox: UserSandbox) -> Paths:
    return Paths(sandbox.home / ".local" / "state" / "mtproxy")


def test_operator_commands_work_without_root_and_say_where_once(sandbox: UserSandbox) -> None:
    mine = own(sandbox)
    status, out, err = mtproxy(sandbox, "add-secret", "--label", "phones")
    assert status == 0, err
    assert err.count(f"keeping secrets, settings, links and logs in {mine.root}") == 1, err
    assert "tg://proxy?server=" + SERVER in out
    records = read_store(mine.secrets_file).secrets
    assert [r.label for r in records] == ["phones"]
    assert (mine.secret_dir(records[0].id) / "qr.png").exists()
    status, out, err = mtproxy(sandbox, "list-secrets")
    assert status == 0 and "phones" in out
    assert "keeping" not in err  # said once: the secret is kept there now


def test_a_readable_installation_is_used_and_per_user_files_are_named(sandbox: UserSandbox) -> None:
    assert mtproxy(sandbox, "add-secret", "--label", "mine")[0] == 0
    status, out, err = mtproxy(sandbox, "list-secrets", system=installed("644"))
    # The installed system wins; its store is root's own (not there at all in this tmpfs: empty).
    assert "mine" not in out, out
    assert (f"mtproxy: using the installation at /opt/vless; your own files in {own(sandbox).root} are not"
            " used") in err, err
    assert f"--root {own(sandbox).root}" in err
    assert status == 0, err


def test_an_unreadable_installation_is_named_and_the_user_root_used(sandbox: UserSandbox) -> None:
    status, _out, err = mtproxy(sandbox, "add-secret", "--label", "mine", system=installed("600"))
    assert status == 0, err
    assert ("an installation at /opt/vless exists but /opt/vless/mtproxy/install.json is not readable by this"
            f" user: using your own files in {own(sandbox).root}") in err, err
    assert [r.label for r in read_store(own(sandbox).secrets_file).secrets] == ["mine"]
