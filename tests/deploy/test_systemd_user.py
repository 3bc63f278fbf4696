"""`--manager systemd`: setup adds the `mtproxy` system user when missing, gives it the proxy's files, and
only then does uninstall delete it; a dry run adds and deletes nothing.

No real user is ever created: fake `id`, `useradd`, `userdel` and `systemctl` scripts come first on the
runner's PATH and keep their users in a JSON file and every call in a log. The fake user gets uid/gid
43210/43211 (the tests run as root, like setup), so its ownership is told apart from root's. The host has no
systemd here, so `systemd.available` and the final port check are the only things replaced in-process.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from mtproxy.cli import setup
from mtproxy.host import install, systemd
from mtproxy.host.layout import HostLayout
from mtproxy.host.runner import Runner
from mtproxy.paths import Paths
from mtproxy.testkit.process import free_port

pytestmark = pytest.mark.netns

UID, GID = 43210, 43211

FAKE = """#!{python}
import json, sys
from pathlib import Path
db, log = Path({db!r}), Path({log!r})
users = json.loads(db.read_text()) if db.exists() else {{}}
name, args = Path(sys.argv[0]).name, sys.argv[1:]
with log.open("a") as f:
    f.write(json.dumps([name, *args]) + "\\n")
if name == "id":
    user = users.get(args[-1])
    if user is None:
        sys.stderr.write("id: '" + args[-1] + "': no such user\\n")
        sys.exit(1)
    print(user[0] if args[0] == "-u" else user[1])
elif name == "useradd":
    users[args[-1]] = [{uid}, {gid}]
elif name == "userdel":
    if users.pop(args[-1], None) is None:
        sys.exit(6)
elif name == "systemctl":
    sys.exit({systemctl_rc})
db.write_text(json.dumps(users))
"""


def _fakes(tmp_path: Path, users: dict[str, list[int]], systemctl_rc: int = 0) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (tmp_path / "users.json").write_text(json.dumps(users))
    text = FAKE.format(python=sys.executable, db=str(tmp_path / "users.json"), log=str(tmp_path / "calls.log"),
                       uid=UID, gid=GID, systemctl_rc=systemctl_rc)
    for name in ("id", "useradd", "userdel", "systemctl"):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTPROXY_")}
    env.update(MTPROXY_SYSCONF=str(tmp_path / "etc"), MTPROXY_ROOT=str(tmp_path / "root"),
               MTPROXY_SERVER="192.0.2.1", PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return env


def _runner(env: dict[str, str], dry_run: bool = False) -> Runner:
    return Runner(dry_run=dry_run, env=env, which=lambda name: shutil.which(name, path=env["PATH"]))


def _calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _user_calls(tmp_path: Path) -> list[list[str]]:
    return [c for c in _calls(tmp_path) if c[0] in ("useradd", "userdel")]


def _users(tmp_path: Path) -> dict[str, list[int]]:
    users: dict[str, list[int]] = json.loads((tmp_path / "users.json").read_text())
    return users


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("setup runs as root (it chowns to the service user)")
    monkeypatch.setattr(systemd, "available", lambda runner: True)
    monkeypatch.setattr(install, "_verify_port", lambda port, timeout: None)


def _setup(env: dict[str, str], port: int, *extra: str, dry_run: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    argv = ["-n", "--manager", "systemd", "--ufw", "skip", "--type", "dd", "--port", str(port), *extra]
    rc = setup.main(argv, env=env, stdin=io.StringIO(), stdout=out, runner=_runner(env, dry_run))
    return rc, out.getvalue()


def _uninstall(env: dict[str, str], dry_run: bool) -> str:
    paths = Paths(Path(env["MTPROXY_ROOT"]))
    out = io.StringIO()
    install.uninstall(_runner(env, dry_run), paths, HostLayout.resolve(paths.root, env), False, out)
    return out.getvalue()


def test_ensure_user_adds_it_once(tmp_path: Path) -> None:
    env = _fakes(tmp_path, {})
    assert systemd.ensure_user(_runner(env)) == (UID, GID, True)
    assert _user_calls(tmp_path) == [["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                                      "/nonexistent", "--shell", "/usr/sbin/nologin", "mtproxy"]]
    assert systemd.ensure_user(_runner(env)) == (UID, GID, False)
    assert len(_user_calls(tmp_path)) == 1


def test_ensure_user_dry_run_adds_nothing(tmp_path: Path) -> None:
    env = _fakes(tmp_path, {})
    runner = _runner(env, dry_run=True)
    assert systemd.ensure_user(runner) == (-1, -1, True)
    assert tuple(systemd.USERADD) in runner.history  # planned, shown, not run
    assert _user_calls(tmp_path) == [] and _users(tmp_path) == {}
    assert [c[:2] for c in _calls(tmp_path)] == [["id", "-u"]]  # the query did run


@pytest.mark.usefixtures("host")
def test_setup_gives_the_files_to_the_user_it_added_and_uninstall_deletes_it(tmp_path: Path) -> None:
    env = _fakes(tmp_path, {})
    port = free_port()
    rc, out = _setup(env, port)
    assert rc == 0, out
    assert "System user mtproxy … added" in out
    assert _users(tmp_path) == {"mtproxy": [UID, GID]}
    root = tmp_path / "root"
    for rel, mode in (("config/mtproxy", 0o750), ("logs/mtproxy", 0o750), ("data/mtproxy", 0o750),
                      ("config/mtproxy/mtproxy_secrets.json", 0o600), ("config/mtproxy/mtproxy_config.json", 0o600),
                      ("logs/mtproxy/mtproxy.log", None)):
        st = (root / rel).stat()
        assert (st.st_uid, st.st_gid) == (UID, GID), rel
        assert mode is None or st.st_mode & 0o777 == mode, rel
    unit = (tmp_path / "etc/systemd/system/mtproxy.service").read_text()
    assert "User=mtproxy" in unit and "Group=mtproxy" in unit
    record = json.loads((root / "mtproxy/install.json").read_text())
    assert record["manager"] == "systemd" and record["user_created"] is True

    # A re-run finds the user there, adds nothing, and still knows the user is setup's.
    rc, out = _setup(env, port)
    assert rc == 0, out
    assert "System user mtproxy … present" in out
    assert [c[0] for c in _user_calls(tmp_path)] == ["useradd"]
    assert json.loads((root / "mtproxy/install.json").read_text())["user_created"] is True

    dry = _uninstall(env, dry_run=True)
    assert "would remove system user mtproxy" in dry
    assert [c[0] for c in _user_calls(tmp_path)] == ["useradd"] and "mtproxy" in _users(tmp_path)

    gone = _uninstall(env, dry_run=False)
    assert "removed system user mtproxy" in gone
    assert _user_calls(tmp_path)[-1] == ["userdel", "mtproxy"] and _users(tmp_path) == {}


@pytest.mark.usefixtures("host")
def test_an_existing_user_is_used_and_never_deleted(tmp_path: Path) -> None:
    env = _fakes(tmp_path, {"mtproxy": [UID, GID]})
    rc, out = _setup(env, free_port())
    assert rc == 0, out
    st = (tmp_path / "root/config/mtproxy/mtproxy_secrets.json").stat()
    assert (st.st_uid, st.st_gid) == (UID, GID)
    assert json.loads((tmp_path / "root/mtproxy/install.json").read_text())["user_created"] is False
    assert "system user" not in _uninstall(env, dry_run=False)
    assert _user_calls(tmp_path) == [] and "mtproxy" in _users(tmp_path)


@pytest.mark.usefixtures("host")
def test_dry_run_setup_adds_no_user_and_writes_nothing(tmp_path: Path) -> None:
    env = _fakes(tmp_path, {})
    rc, out = _setup(env, free_port(), dry_run=True)
    assert rc == 0, out
    assert "would add the system user mtproxy" in out and "nothing changed" in out
    assert _user_calls(tmp_path) == [] and _users(tmp_path) == {}
    assert not (tmp_path / "root").exists() and not (tmp_path / "etc").exists()


@pytest.mark.usefixtures("host")
def test_a_failed_install_deletes_the_user_it_added(tmp_path: Path) -> None:
    env = _fakes(tmp_path, {}, systemctl_rc=1)
    rc, out = _setup(env, free_port())
    assert rc == 1, out
    assert "undone: the system user mtproxy" in out
    assert [c[0] for c in _user_calls(tmp_path)] == ["useradd", "userdel"] and _users(tmp_path) == {}
