"""What the CLI says is what happened: links without a server, set-port racing add-secret, temp files of killed
writers, --version/--help on every entry point, `mtproxy` alone, the firewall hint's port."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mtproxy import __version__
from mtproxy.cli.errors import ExitStatus
from mtproxy.host.install import InstallPlan, preflight
from mtproxy.host.layout import HostLayout
from mtproxy.host.runner import Runner
from mtproxy.links import ServerUnknownError
from mtproxy.operations import apply as secret_cmds
from mtproxy.operations import artifacts
from mtproxy.paths import Paths
from mtproxy.settings import read_settings
from mtproxy.testkit.process import free_port

from .conftest import Result, cli_env, no_host_tools, run_process

Cli = Callable[..., Result]


def _link_ports(paths: Paths) -> set[str]:
    """The port= of every link file under the root."""
    ports = set()
    for file in paths.data_dir.rglob("*.txt"):
        for line in file.read_text().splitlines():
            ports.add(line.split("port=")[1].split("&")[0])
    return ports


def test_set_port_without_a_server_says_the_links_were_not_rewritten(
    cli: Cli, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_route() -> object:
        raise ServerUnknownError("no default route")

    monkeypatch.setattr(artifacts, "guess_public_address", no_route)
    assert cli("add-secret", "--label", "a", server_override=None).status == ExitStatus.OK
    port = free_port()
    result = cli("set-port", str(port), server_override=None)
    assert result.status == ExitStatus.OK, result.err
    assert "links:   could not be rewritten: no server address — set one with `mtproxy set-server HOST`" \
        in result.out
    assert "links:   rewritten" not in result.out
    assert read_settings(paths.settings_file).port == port


def test_set_port_during_add_secret_leaves_no_link_on_the_old_port(
    cli: Cli, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add-secret reads the settings, then a whole set-port runs (another process) before add-secret gets the
    store's lock: the links add-secret writes must carry the new port, as set-port's did."""
    assert cli("add-secret", "--label", "first").status == ExitStatus.OK
    new_port = free_port()
    real_update = secret_cmds.update_store
    moved: list[subprocess.CompletedProcess[str]] = []

    def race_then_update(*args: Any, **kwargs: Any) -> Any:
        if not moved:  # add-secret has read the settings; it has not taken the store's lock yet
            moved.append(run_process(paths.root, "set-port", str(new_port), "--no-restart"))
        return real_update(*args, **kwargs)

    monkeypatch.setattr(secret_cmds, "update_store", race_then_update)
    added = cli("add-secret", "--label", "second", "--json")
    assert moved[0].returncode == 0, moved[0].stderr
    assert added.status == ExitStatus.OK, added.err
    assert f"port={new_port}&" in added.json()["tg"]  # what it printed is what it wrote
    assert _link_ports(paths) == {str(new_port)}


def test_temp_files_of_killed_link_and_qr_writes_are_removed_by_the_next_writer(cli: Cli, paths: Paths) -> None:
    assert cli("add-secret", "--label", "a").status == ExitStatus.OK
    [secret_dir] = (paths.data_dir / "secrets").iterdir()
    left = [secret_dir / ".qr.png.k1ll3d.tmp", secret_dir / ".link.txt.abc123.tmp",
            paths.data_dir / ".mtproxy_qr.svg.x9.tmp", paths.data_dir / ".mtproxy_link.txt.y8.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    operator_file = paths.data_dir / "notes.tmp"
    operator_file.write_text("not ours")
    assert cli("add-secret", "--label", "b").status == ExitStatus.OK
    assert not any(path.exists() for path in left)
    assert operator_file.exists()


def test_a_writer_killed_while_writing_qr_codes_leaves_nothing_after_the_next(tmp_path: Path) -> None:
    """A real kill -9 between writing a QR code's temp file and renaming it: the next writer clears it."""
    root = tmp_path / "root"
    assert run_process(root, "add-secret", "--label", "a").returncode == 0
    script = (
        "import os, signal\n"
        "real = os.replace\n"
        "def replace(src, dst, *args, **kw):\n"
        "    if os.sep + 'data' + os.sep in str(dst):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(src, dst, *args, **kw)\n"
        "os.replace = replace\n"
        "from mtproxy.cli.main import main\n"
        "main(['add-secret', '--label', 'b'])\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], env=cli_env(root), capture_output=True, text=True,
                            timeout=60, check=False)
    assert killed.returncode == -9, killed.stderr
    data = root / "data" / "mtproxy"
    assert [p.name for p in data.rglob("*.tmp")]  # what the killed writer left
    assert run_process(root, "show-config", "--no-qr").returncode == 0
    assert [p.name for p in data.rglob("*.tmp")] == []


@pytest.mark.parametrize("argv", [
    ["-m", "mtproxy.cli.main"],
    ["-c", "from mtproxy.cli.entry import main; main()"],
    ["-c", "from mtproxy.cli.entry import main; main()", "run"],
    ["-c", "from mtproxy.cli.entry import main; main()", "healthcheck"],
    ["-m", "mtproxy.cli.main", "run"],
    ["-m", "mtproxy.cli.main", "healthcheck"],
    ["-m", "mtproxy.cli.main", "setup"],
    ["-m", "mtproxy.cli.main", "uninstall"],
    ["-c", "from mtproxy.cli.main import setup_main; setup_main()"],
    ["-c", "from mtproxy.cli.main import uninstall_main; uninstall_main()"],
])
def test_version_and_help_on_every_entry_point(tmp_path: Path, argv: list[str]) -> None:
    env = cli_env(tmp_path / "root")
    version = subprocess.run([sys.executable, *argv, "--version"], env=env, capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().endswith(f" {__version__}") and version.stdout.startswith("mtproxy")
    assert version.stdout.count("\n") == 1
    shown = subprocess.run([sys.executable, *argv, "--help"], env=env, capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "usage:" in shown.stdout.lower() and shown.stderr == ""


def test_mtproxy_alone_prints_the_help_and_succeeds(tmp_path: Path) -> None:
    result = run_process(tmp_path / "root")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: mtproxy [OPTIONS] COMMAND") and "set-port" in result.stdout


def test_firewall_hints_name_the_configured_port(tmp_path: Path, cli: Cli) -> None:
    port = free_port()
    layout = HostLayout.resolve(tmp_path / "root", {"MTPROXY_SYSCONF": str(tmp_path / "etc")})
    plan = InstallPlan(root=tmp_path / "root", port=port, workers=1, secret_type="dd", domain=None, server=None,
                       manager="none")
    warnings = preflight(plan, Runner(which=no_host_tools), layout)
    assert any("ufw is not installed" in w and f"open {port}/tcp" in w for w in warnings), warnings
    other = free_port()
    moved = cli("set-port", str(other))
    assert f"firewall: allow the new port: `ufw limit {other}/tcp" in moved.out


def test_setup_values_reach_the_settings_file_unchanged(tmp_path: Path) -> None:
    """The shared checks normalise (case, trailing dot) and what they return is what setup saves."""
    from mtproxy.cli import setup

    port = free_port()
    out = io.StringIO()
    status = setup.main(["-n", "--manager", "none", "--ufw", "skip", "--port", str(port), "--type", "EE",
                         "--domain", "WWW.Example.com", "--server", "Proxy.Example.org."],
                        env={"MTPROXY_ROOT": str(tmp_path / "root"), "MTPROXY_SYSCONF": str(tmp_path / "etc")},
                        stdin=io.StringIO(), stdout=out, runner=Runner(which=no_host_tools))
    assert status == 0, out.getvalue()
    saved = json.loads((tmp_path / "root/config/mtproxy/mtproxy_config.json").read_text())
    assert (saved["port"], saved["domain"], saved["server"]) == (port, "www.example.com", "proxy.example.org")
