"""What fits mtproxy into the host's tools, installed by setup and removed by uninstall: shell completions
that complete secret ids and labels, `man mtproxy` generated from the CLI, the drop-in for `vless status`
(`mtproxy status --section`); and the docs' log file and fail2ban commands agree with what the code writes.

Setup runs as in test_wizard.py: manager `none`, UFW skipped, /etc replaced by MTPROXY_SYSCONF (a temp dir),
so the files meant for /usr/local/share land in <tmp>/usr/local/share.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from mtproxy.cli.main import cli
from mtproxy.cli.manpage import render
from mtproxy.host import fail2ban, templates
from mtproxy.host.layout import HostLayout
from mtproxy.testkit.process import free_port

from .conftest import REPO
from .test_wizard import _cli, _env

pytestmark = pytest.mark.netns

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _installed(tmp_path: Path) -> tuple[dict[str, str], HostLayout, dict[str, str]]:
    """Setup (dd, then a labelled ee secret): the environment, the layout, and {secret id: label}."""
    env = _env(tmp_path, MTPROXY_SERVER="192.0.2.1")
    result = _cli(tmp_path, "setup", "-n", "--manager", "none", "--ufw", "skip", "--port", str(free_port()),
                  "--type", "dd", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    added = _cli(tmp_path, "add-secret", "--fake-tls", "www.example.com", "--label", "phones", env=env)
    assert added.returncode == 0, added.stdout + added.stderr
    store = json.loads((tmp_path / "root/config/mtproxy/mtproxy_secrets.json").read_text())
    layout = HostLayout.resolve(tmp_path / "root", env)
    return env, layout, {s["id"]: s["label"] for s in store["secrets"]}


def _bash_complete(completion_file: Path, words: list[str], env: dict[str, str]) -> list[str]:
    """Source the installed bash completion and ask it, as bash would on <Tab>, to complete the last word."""
    script = (f'source "{completion_file}"\nCOMP_WORDS=({" ".join(repr(w) for w in words)})\n'
              f"COMP_CWORD={len(words) - 1}\n_mtproxy_completion mtproxy\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_setup_installs_completions_man_page_and_status_hook_and_uninstall_removes_them(tmp_path: Path) -> None:
    env, layout, secrets = _installed(tmp_path)
    root = str(tmp_path / "root")
    ids = set(secrets)
    assert layout.completions["bash"] == tmp_path / "usr/local/share/bash-completion/completions/mtproxy"

    # bash: every id and label of this root's store; a prefix narrows it.
    env_without_root = {k: v for k, v in env.items() if k != "MTPROXY_ROOT"}
    offered = _bash_complete(layout.completions["bash"], ["mtproxy", "--root", root, "remove-secret", ""],
                             env_without_root)
    assert set(offered) == ids | {"default", "phones"}
    assert _bash_complete(layout.completions["bash"], ["mtproxy", "show-config", "ph"], env) == ["phones"]
    for shell in ("zsh", "fish"):
        assert "_MTPROXY_COMPLETE" in layout.completions[shell].read_text()

    # man mtproxy, exactly: found through the manpath, rendered without warnings, every command in it.
    if shutil.which("man") is not None:
        page = subprocess.run(["man", "--warnings", "-P", "cat", "mtproxy"], capture_output=True, text=True,
                              timeout=60, env={**env, "MANPATH": str(layout.man_page.parents[1]),
                                               "MANWIDTH": "100", "LC_ALL": "C.UTF-8"})
        assert page.returncode == 0 and page.stderr == "", page.stderr
        for name in cli.commands:
            assert re.search(rf"^ +{re.escape(name)}$", page.stdout, re.M), name

    # The vless status drop-in: this root's section, ✓/✗ lines, the status exit code (nothing runs here).
    hook = layout.status_hook
    assert hook.stat().st_mode & 0o777 == 0o755
    section = subprocess.run([str(hook)], capture_output=True, text=True, timeout=60, env=env_without_root,
                             cwd=tmp_path)
    lines = section.stdout.splitlines()
    assert section.returncode == 8, section.stdout + section.stderr
    assert lines[0] == "MTProxy" and all(line.startswith(("  ✓ ", "  ✗ ", "  • ")) for line in lines[1:])
    assert any(line.startswith("  ✗ port: ") for line in lines)
    assert f"{root}/config/mtproxy/mtproxy_secrets.json" in section.stdout  # the root it was installed for
    assert "\x1b[" not in section.stdout  # no colour for a report that is not a terminal

    record = json.loads((tmp_path / "root/mtproxy/install.json").read_text())
    extras = [*layout.completions.values(), layout.man_page, hook]
    assert {str(p) for p in extras} <= set(record["files"])
    gone = _cli(tmp_path, "uninstall", "--yes", env=env)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert [p for p in extras if p.exists()] == []


def test_completion_needs_a_readable_store_and_never_fails(tmp_path: Path) -> None:
    env = _env(tmp_path, _MTPROXY_COMPLETE="bash_complete", COMP_WORDS="mtproxy regenerate-secret ", COMP_CWORD="2")
    store = tmp_path / "root/config/mtproxy/mtproxy_secrets.json"
    store.parent.mkdir(parents=True)
    store.write_text("{ not json")
    result = subprocess.run(["mtproxy"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr == ""


def test_man_page_documents_every_command_and_option() -> None:
    page = render(cli)
    ctx = click.Context(cli, info_name="mtproxy")
    for name, command in cli.commands.items():
        assert f".SS {name.replace('-', chr(92) + '-')}\n" in page, name
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt.replace("-", "\\-") in page, (name, opt)
    assert (cli.help or "").split(":")[0] in page
    assert ctx.command is cli


def _doc_text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in DOCS)


def test_docs_name_the_log_file_the_code_writes() -> None:
    named = set(re.findall(r"logs/mtproxy/([\w.-]+\.log)", _doc_text()))
    assert named == {templates.LOG_NAME}
    files = templates.ProxyFiles("/opt/vless")
    assert files.log_file == f"/opt/vless/logs/mtproxy/{templates.LOG_NAME}"
    assert f"--log-file {files.log_file}" in " ".join(_doc_text().split())


def test_docs_fail2ban_commands_use_the_jail_and_files_setup_writes(tmp_path: Path) -> None:
    """Each documented fail2ban-client command names our jail; the documented fail2ban-regex command, run as
    written (with /opt/vless and /etc mapped to this test's root and sysconf), finds a rejected handshake."""
    text = _doc_text()
    clients = re.findall(r"`(fail2ban-client [^`]+)`", text)
    assert clients, "the docs show no fail2ban-client command"
    for command in clients:
        words = command.split()
        assert words[1] in ("status", "get", "set", "reload") and words[2] == fail2ban.JAIL, command
    env = _env(tmp_path, MTPROXY_SERVER="192.0.2.1")
    env["MTPROXY_ROOT"] = str(tmp_path / "opt/vless")
    result = _cli(tmp_path, "setup", "-n", "--manager", "none", "--ufw", "skip", "--port", str(free_port()),
                  "--type", "dd", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    jail = (tmp_path / "etc/fail2ban/jail.d/mtproxy.conf").read_text()
    assert f"[{fail2ban.JAIL}]" in jail
    log = tmp_path / "opt/vless/logs/mtproxy" / templates.LOG_NAME
    log.write_text("2026-11-25T21:30:00Z mtproxy[42]: rejected handshake from 203.0.113.5 port 51234 on "
                   "0.0.0.0:8443: reason=tls-bad-hmac\n")
    regex_commands = re.findall(r"`(fail2ban-regex [^`]+)`", text)
    assert regex_commands, "the docs show no fail2ban-regex command"
    if shutil.which("fail2ban-regex") is None:
        pytest.skip("fail2ban is not installed")
    for command in regex_commands:
        mapped = command.replace("/opt/vless", str(tmp_path / "opt/vless")).replace("/etc/", f"{tmp_path}/etc/")
        argv = mapped.split()
        run = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C"})
        assert run.returncode == 0, run.stdout + run.stderr
        assert re.search(r"Lines: 1 lines, 0 ignored, 1 matched", run.stdout), run.stdout


def test_docs_failregex_is_the_shipped_filter() -> None:
    shipped = next(line for line in templates.fail2ban_filter().splitlines() if line.startswith("failregex"))
    assert f"`{shipped.split('=', 1)[1].strip()}`" in (REPO / "docs/engine.md").read_text()


def test_status_hook_says_when_mtproxy_is_gone(tmp_path: Path) -> None:
    """Uninstalled by pip but the hook still there: one ✗ line for the host's report, not a shell error."""
    hook = tmp_path / "status-hook"
    missing = tmp_path / "old venv" / "bin" / "mtproxy"
    hook.write_text(templates.status_hook(str(missing), tmp_path / "a root"))
    result = subprocess.run(["sh", str(hook)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stderr == ""
    assert result.stdout.splitlines() == ["MTProxy", f"  ✗ mtproxy: {missing} is missing — reinstall mtproxy and "
                                                     "run mtproxy-setup"]



def test_completion_reads_the_root_the_commands_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user without --root or MTPROXY_ROOT and nothing installed works on a per-user root: completion
    offers that store's secrets (the commands' own choice of root, paths.choose_root)."""
    if (Path("/opt/vless") / "mtproxy" / "install.json").exists():
        pytest.skip("this host has an installation at /opt/vless")
    from mtproxy.cli.completion import complete_secret_ref
    from mtproxy.paths import choose_root, user_root
    from mtproxy.store import SecretRecord, update_store

    for name in [k for k in os.environ if k.startswith(("MTPROXY_", "XDG_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    mine = user_root(os.environ)
    assert mine is not None and choose_root(None, os.environ, 1000).paths.root == mine
    record = SecretRecord(id="0badc0de", value="dd" + "11" * 16, type="dd", label="mine", padding_enabled=True)
    update_store(mine / "config/mtproxy/mtproxy_secrets.json", lambda data: (data.with_record(record), None))
    ctx = click.Context(cli, info_name="mtproxy")
    ctx.params["root"] = None
    command = cli.commands["show-config"]
    sub = click.Context(command, info_name="show-config", parent=ctx)
    offered = complete_secret_ref(sub, command.params[0], "")
    assert [item.value for item in offered] == ["0badc0de", "mine"]
