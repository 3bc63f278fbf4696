"""Every shell command shown in README.md and the pages under docs/ runs, exactly as written, against a
temporary install, or is marked in its page with the reason it cannot run here.

The commands are the lines of the fenced blocks labelled sh, bash, shell or console (a trailing backslash
joins lines). Each runs through `bash -c` with the line as written, comment and all, in a temporary root:
MTPROXY_ROOT and MTPROXY_SYSCONF point at temp dirs, and PATH holds only the mtproxy programs under test and
a few ordinary tools, so docker, systemctl, ufw and fail2ban-client cannot be reached and nothing on the host
is touched. Before a document's commands run, the root is put in the state `mtproxy-setup` leaves (settings
with a link server, one secret) and the engine serves it on loopback, as an installed proxy would.

A command that cannot run here is marked in the document with an HTML comment that names it and says why:

    <!-- docs-test: skip `pip install .` — installs into the system's Python -->
    <!-- docs-test: serves `mtproxy run` — a server: passes once it logs "ready:", then it is stopped -->
    <!-- docs-test: exit 8 `mtproxy status` — a documented non-zero exit status -->

A mark names the command without its trailing comment, whitespace collapsed (so one line can name a command
continued over several). A mark that names no command of its document, or has no reason, fails the test, as
does an unlabelled block or a page under docs/ that is in neither list below.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import mtproxy
from mtproxy.testkit.process import ProxyProcess, free_port

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/cli.md", "docs/deploy.md", "docs/engine.md", "docs/testing.md", "docs/benchmarks.md",
        "docs/mtproxy/user_guide.md", "docs/undetectability.md")
# Pages with no shell command (the page for end users, the design notes): their blocks must still be labelled.
PROSE = ("docs/architecture.md", "docs/protocol.md", "docs/mtproxy/for_users.md")
SHELL = {"sh", "bash", "shell", "console"}
SERVER = "203.0.113.10"  # TEST-NET-3: only written into links, never contacted
TOOLS = ("bash", "sh", "env", "ip", "unshare", "head", "tail", "cat", "grep", "sed", "jq", "timeout", "sleep")
PROGRAMS = {"mtproxy": "from mtproxy.cli.entry import main", "mtproxy-setup": "from mtproxy.cli.main import "
            "setup_main as main", "mtproxy-uninstall": "from mtproxy.cli.main import uninstall_main as main"}

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)
_MARK = re.compile(r"<!--\s*docs-test:\s*(skip|serves|exit (\d+))\s+`([^`]+)`\s*(?:—|--)\s*(.*?)\s*-->", re.S)
_COMMENT = re.compile(r"\s+#\s.*$")


@dataclass(frozen=True)
class Mark:
    kind: str  # "skip", "serves" or "exit"
    command: str
    reason: str
    status: int = 0


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m.group(1).strip(), m.group(2)) for m in _FENCE.finditer(text)]


def commands(text: str) -> list[str]:
    """The shell commands of a document, in order, as written (continuation lines joined)."""
    found: list[str] = []
    for language, body in blocks(text):
        if language not in SHELL:
            continue
        pending = ""
        for line in body.splitlines():
            pending += line
            if pending.endswith("\\"):
                pending = pending[:-1] + "\n"
                continue
            if pending.strip() and not pending.lstrip().startswith("#"):
                found.append(pending.strip())
            pending = ""
    return found


def bare(command: str) -> str:
    """The command without its trailing `# comment`, whitespace collapsed: how a mark names it."""
    return " ".join(_COMMENT.sub("", command).split())


def marks(text: str) -> dict[str, Mark]:
    found = {}
    for m in _MARK.finditer(text):
        kind = "exit" if m.group(2) else m.group(1)
        command = " ".join(m.group(3).split())
        found[command] = Mark(kind, command, m.group(4), int(m.group(2) or 0))
    return found


@pytest.mark.parametrize("doc", DOCS + PROSE)
def test_every_block_is_labelled_and_every_mark_names_a_command_with_a_reason(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    unlabelled = [body.splitlines()[0] if body else "" for language, body in blocks(text) if not language]
    assert unlabelled == [], f"{doc}: label these code blocks (sh, json, text …): {unlabelled}"
    shown = {bare(c) for c in commands(text)}
    assert bool(shown) == (doc in DOCS), f"{doc}: shows {len(shown)} shell commands; list it in DOCS or PROSE"
    for mark in marks(text).values():
        assert mark.command in shown, f"{doc}: the mark names `{mark.command}`, which the document does not show"
        assert len(mark.reason) >= 10, f"{doc}: the mark for `{mark.command}` needs a reason"


def test_every_page_is_checked() -> None:
    pages = {"README.md", *(p.relative_to(REPO).as_posix() for p in (REPO / "docs").rglob("*.md"))}
    assert pages == set(DOCS) | set(PROSE), "list every page in DOCS (it shows commands) or PROSE"


def test_the_extractor_reads_blocks_marks_and_continuations() -> None:
    text = ("<!-- docs-test: skip `pip install .` — installs into the system -->\n"
            "```sh\npip install .   # comment\n# a comment line\nmtproxy a \\\n  --b\n```\n"
            "```json\n{\"x\": 1}\n```\n")
    assert commands(text) == ["pip install .   # comment", "mtproxy a \n  --b"]
    assert bare("pip install .   # comment") == "pip install ."
    assert bare("mtproxy a \n  --b  # why") == "mtproxy a --b"
    assert marks(text)["pip install ."].kind == "skip"


@pytest.fixture
def installation(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of an installed proxy in a temp root: the settings and secret setup writes, the engine
    serving them, and a PATH without the host's service tools."""
    root, etc, home, bin_dir = (tmp_path / name for name in ("root", "etc", "home", "bin"))
    for directory in (etc, home, bin_dir):
        directory.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    for name, entry in PROGRAMS.items():
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.argv[0] = \"{name}\"; {entry}; "
                        f"main()' \"$@\"\n")
        shim.chmod(0o755)
    src = str(Path(mtproxy.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTPROXY_")}
    env.update(MTPROXY_ROOT=str(root), MTPROXY_SYSCONF=str(etc), HOME=str(home), PATH=str(bin_dir), NO_COLOR="1",
               PYTHONPATH=src + os.pathsep + env.get("PYTHONPATH", ""))
    port, stats_port = free_port(), free_port()
    settings = root / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"version": 1, "port": port, "stats_port": stats_port, "server": SERVER}))
    added = subprocess.run(["mtproxy", "add-secret", "--label", "default"], env=env, capture_output=True,
                           text=True, timeout=60, check=False)
    assert added.returncode == 0, added.stderr
    engine = ProxyProcess(["--no-mask", "--dc-override", "*=127.0.0.1:9", "--reload-interval", "0.2"],
                          tmp_path / "engine.log", root=root)
    try:
        engine.wait_ready()
        yield env
    finally:
        engine.stop()


def _serve(line: str, env: dict[str, str], log: Path, timeout: float = 30.0) -> str:
    """Start a server command; True once it logs "ready:", then stop it (its whole process group)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", line], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while "ready:" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.mark.netns
@pytest.mark.parametrize("doc", DOCS)
def test_every_command_runs_as_written(doc: str, installation: dict[str, str], tmp_path: Path) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    doc_marks = marks(text)
    ran = skipped = 0
    for line in commands(text):
        mark = doc_marks.get(bare(line))
        if mark is not None and mark.kind == "skip":
            skipped += 1
            continue
        if mark is not None and mark.kind == "serves":
            output = _serve(line, installation, tmp_path / f"serve{ran}.log")
            assert "ready:" in output, f"{doc}: `{line}` never got ready:\n{output[-3000:]}"
            ran += 1
            continue
        result = subprocess.run(["bash", "-c", line], env=installation, cwd=REPO, capture_output=True, text=True,
                                timeout=120, stdin=subprocess.DEVNULL, check=False)
        expected = mark.status if mark is not None else 0
        shown = f"{doc}: `{line}` exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert result.returncode == expected, shown
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, shown
        ran += 1
    assert ran or skipped, f"{doc}: no command found"
