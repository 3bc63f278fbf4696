"""Setup, set-port and uninstall touch only what setup itself created, and a dry run changes nothing.

Like test_wizard.py: a temp root, /etc replaced by MTPROXY_SYSCONF, manager `none`. UFW is a fake `ufw` on
PATH keeping its rules in a file (test_firewall.py runs the real one), so the operator's own rules can be
seeded and checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mtproxy.store import StoreData, StoreFormatError, parse_store, read_store, write_store
from mtproxy.testkit.process import free_port

from .test_wizard import _cli, _env, _setup_args, _tree

pytestmark = pytest.mark.netns

FAKE_UFW = """#!{python}
import json, sys
from pathlib import Path
db = Path({db!r})
rules = json.loads(db.read_text()) if db.exists() else []
args = sys.argv[1:]
if args == ["status"]:
    print("Status: inactive")
elif args == ["show", "added"]:
    print("Added user rules (see 'ufw status' for running firewall):")
    print("\\n".join(rules) if rules else "(None)")
elif args[0] == "delete":
    spec = "ufw " + " ".join(args[1:])
    rules = [r for r in rules if r != spec and not r.startswith(spec + " ")]
else:
    spec = "ufw " + " ".join(args[:2])
    rules = [r for r in rules if r.split()[2:3] != [args[1]]]  # ufw updates a rule for the same port
    rules.append(spec + (" comment '" + args[3] + "'" if len(args) > 3 else ""))
db.write_text(json.dumps(rules))
"""


def _with_ufw(tmp_path: Path, rules: list[str], **extra: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    db = tmp_path / "ufw-rules.json"
    db.write_text(json.dumps(rules))
    script = bindir / "ufw"
    script.write_text(FAKE_UFW.format(python=sys.executable, db=str(db)))
    script.chmod(0o755)
    env = _env(tmp_path, MTPROXY_SERVER="192.0.2.1", **extra)
    env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _rules(tmp_path: Path) -> list[str]:
    rules: list[str] = json.loads((tmp_path / "ufw-rules.json").read_text())
    return rules


def _record(tmp_path: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((tmp_path / "root/mtproxy/install.json").read_text())
    return doc


def test_dry_run_uninstall_removes_nothing(tmp_path: Path) -> None:
    setup = _cli(tmp_path, *_setup_args(free_port()), "--type", "dd", env=_env(tmp_path, MTPROXY_SERVER="192.0.2.1"))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    before = _tree(tmp_path)
    for args in (("uninstall", "--yes", "--dry-run"), ("--dry-run", "uninstall", "--yes"),
                 ("--dry-run", "uninstall", "--yes", "--purge")):
        result = _cli(tmp_path, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "would remove" in result.stdout and "nothing was removed" in result.stdout, args
        assert _tree(tmp_path) == before, args


def test_global_dry_run_reaches_setup(tmp_path: Path) -> None:
    result = _cli(tmp_path, "--dry-run", *_setup_args(free_port()), "--type", "dd")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing changed" in result.stdout
    assert not (tmp_path / "root").exists() and not (tmp_path / "etc").exists()


def test_uninstall_without_record_leaves_etc_alone(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    theirs = [etc / "fail2ban/jail.d/mtproxy.conf", etc / "fail2ban/filter.d/mtproxy.conf",
              etc / "logrotate.d/mtproxy", etc / "systemd/system/mtproxy.service"]
    for path in theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the operator's own\n")
    env = _with_ufw(tmp_path, ["ufw limit 8443/tcp comment 'MTProxy'"])
    result = _cli(tmp_path, "uninstall", "--yes", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no install record" in result.stdout
    assert all(path.read_text() == "the operator's own\n" for path in theirs)
    assert _rules(tmp_path) == ["ufw limit 8443/tcp comment 'MTProxy'"]


def test_uninstall_removes_only_listed_files(tmp_path: Path) -> None:
    setup = _cli(tmp_path, *_setup_args(free_port()), "--type", "dd", env=_env(tmp_path, MTPROXY_SERVER="192.0.2.1"))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    unit = tmp_path / "etc/systemd/system/mtproxy.service"  # not setup's: the manager is `none`
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\n")
    record = _record(tmp_path)
    jail = str(tmp_path / "etc/fail2ban/jail.d/mtproxy.conf")
    record["files"] = [f for f in record["files"] if f != jail]  # type: ignore[attr-defined]
    (tmp_path / "root/mtproxy/install.json").write_text(json.dumps(record))
    result = _cli(tmp_path, "uninstall", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert unit.exists() and Path(jail).exists()
    assert not (tmp_path / "etc/fail2ban/filter.d/mtproxy.conf").exists()
    assert not (tmp_path / "etc/logrotate.d/mtproxy").exists()


def test_ufw_operator_rules_are_never_touched(tmp_path: Path) -> None:
    port = free_port()
    operator = [f"ufw allow {port}/tcp", "ufw allow 22/tcp"]
    env = _with_ufw(tmp_path, operator)
    setup = _cli(tmp_path, "setup", "-n", "--manager", "none", "--ufw", "limit", "--port", str(port),
                 "--type", "dd", env=env)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert _rules(tmp_path) == operator  # their rule for the port is kept, not replaced by ours
    assert _record(tmp_path)["ufw_added"] is False
    result = _cli(tmp_path, "uninstall", "--yes", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _rules(tmp_path) == operator


def test_ufw_rule_setup_added_follows_and_goes(tmp_path: Path) -> None:
    port, new_port, third = free_port(), free_port(), free_port()
    env = _with_ufw(tmp_path, ["ufw allow 22/tcp"])
    args = ["setup", "-n", "--manager", "none", "--ufw", "limit", "--type", "dd"]
    setup = _cli(tmp_path, *args, "--port", str(port), env=env)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert _rules(tmp_path) == ["ufw allow 22/tcp", f"ufw limit {port}/tcp comment 'MTProxy'"]
    assert _record(tmp_path)["ufw_added"] is True
    # A re-run on another port moves our rule instead of leaving the old one open.
    rerun = _cli(tmp_path, *args, "--port", str(new_port), env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _rules(tmp_path) == ["ufw allow 22/tcp", f"ufw limit {new_port}/tcp comment 'MTProxy'"]
    # set-port without a restart still moves the rule and the fail2ban jail.
    moved = _cli(tmp_path, "set-port", str(third), "--no-restart", env=env)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert _rules(tmp_path) == ["ufw allow 22/tcp", f"ufw limit {third}/tcp comment 'MTProxy'"]
    assert f"port     = {third}" in (tmp_path / "etc/fail2ban/jail.d/mtproxy.conf").read_text()
    assert _record(tmp_path)["port"] == third
    gone = _cli(tmp_path, "uninstall", "--yes", env=env)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert _rules(tmp_path) == ["ufw allow 22/tcp"]


def test_skip_mode_never_touches_ufw(tmp_path: Path) -> None:
    port = free_port()
    ours = f"ufw limit {port}/tcp comment 'MTProxy'"
    env = _with_ufw(tmp_path, [ours])
    setup = _cli(tmp_path, *_setup_args(port), "--type", "dd", env=env)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    moved = _cli(tmp_path, "set-port", str(free_port()), "--no-restart", env=env)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert _cli(tmp_path, "uninstall", "--yes", env=env).returncode == 0
    assert _rules(tmp_path) == [ours]


def test_setup_rerun_with_another_type_keeps_the_store_valid(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, MTPROXY_SERVER="192.0.2.1")
    for kind in ("dd", "plain"):
        result = _cli(tmp_path, *_setup_args(port), "--type", kind, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    data = read_store(tmp_path / "root/config/mtproxy/mtproxy_secrets.json")
    assert sorted(rec.label for rec in data.secrets) == ["default", "default-2"]


def test_write_store_refuses_what_would_not_read_back(tmp_path: Path) -> None:
    file = tmp_path / "secrets.json"
    text = json.dumps({"secrets": [
        {"id": "a1", "label": "default", "value": "0123456789abcdef0123456789abcdef", "type": "plain"},
        {"id": "b2", "label": "default", "value": "dd" + "11" * 16, "type": "dd"},
    ], "metadata": {}})
    with pytest.raises(StoreFormatError):
        parse_store(text, file)
    good = parse_store(json.dumps({"secrets": [json.loads(text)["secrets"][0]], "metadata": {}}), file)
    twice = StoreData(secrets=(good.secrets[0], good.secrets[0]))
    with pytest.raises(StoreFormatError):
        write_store(file, twice)
    assert not file.exists()


@pytest.mark.parametrize("bad_id", ["../../etc/x", "a/b", "..", "", "x" * 65, "a b"])
def test_secret_ids_must_be_path_safe(tmp_path: Path, bad_id: str) -> None:
    text = json.dumps({"secrets": [{"id": bad_id, "value": "0123456789abcdef0123456789abcdef"}], "metadata": {}})
    with pytest.raises(StoreFormatError):
        parse_store(text, tmp_path / "secrets.json")


@pytest.mark.parametrize("name", ["MTPROXY_PORT", "MTPROXY_WORKERS"])
def test_non_integer_environment_is_a_clear_error(tmp_path: Path, name: str) -> None:
    env = _env(tmp_path, **{name: "eighty"})
    result = _cli(tmp_path, "setup", "-n", "--manager", "none", "--ufw", "skip", "--type", "dd", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"mtproxy-setup: {name} must be a whole number")  # the CLI's edge: stderr
    assert "Traceback" not in result.stderr
