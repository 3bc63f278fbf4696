"""The guide's pictures come from the real tools: scripts/doc-pictures makes them, and what is committed in
docs/mtproxy/pictures is what it makes (QR codes that decode to the links beside them, a stats screen of the
real secrets, reject lines the shipped fail2ban filter reads)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mtproxy.host import templates

from ..qr_decode import decode_terminal_qr
from .pictures import STACK_HAPROXY, stack_diagram

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "docs" / "mtproxy" / "pictures"
FILES = ("qr.png", "qr.svg", "link.txt", "qr-terminal.txt", "stats-live.txt", "reject-lines.txt", "stack.txt")
LABELS = ("alice", "bob", "family")


def _zbar(image: Path) -> str:
    return subprocess.run(["zbarimg", "--quiet", "--raw", str(image)], capture_output=True, text=True, timeout=30,
                          check=True).stdout.rstrip("\n")


def _terminal_qr(shown: str) -> str:
    """The half-block drawing of `show-config`'s output: its lines made only of blocks and spaces."""
    return "\n".join(line for line in shown.splitlines() if line and set(line) <= set("█▀▄ "))


def check_pictures(directory: Path, scratch: Path) -> None:
    for name in FILES:
        assert (directory / name).stat().st_size > 0, name
    tg_link, https_link = (directory / "link.txt").read_text().splitlines()
    assert tg_link.startswith("tg://proxy?server=proxy.example.org&port=443&secret=ee"), tg_link
    assert https_link == tg_link.replace("tg://proxy?", "https://t.me/proxy?")
    assert _zbar(directory / "qr.png") == tg_link
    assert "<svg" in (directory / "qr.svg").read_text()  # zbarimg reads no SVG without ImageMagick's delegates
    shown = (directory / "qr-terminal.txt").read_text()
    assert tg_link in shown and https_link in shown
    assert decode_terminal_qr(_terminal_qr(shown), scratch) == tg_link
    screen = (directory / "stats-live.txt").read_text()
    assert screen.startswith("mtproxy stats — http://127.0.0.1:8888/stats"), screen
    assert screen.count("mtproxy stats —") == 1, "--live must redraw in place, one frame on the screen"
    assert "6 active" in screen and "6 handshakes ok" in screen, screen
    assert all(label in screen for label in LABELS), screen
    for text in (shown, screen, (directory / "reject-lines.txt").read_text()):
        assert "/tmp" not in text and "doc-pictures-" not in text
    filter_file = scratch / "mtproxy.conf"
    filter_file.write_text(templates.fail2ban_filter())
    found = subprocess.run(["fail2ban-regex", "-o", "ip", str(directory / "reject-lines.txt"), str(filter_file)],
                           capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert found == ["127.0.0.1"] * 3, found
    assert (directory / "stack.txt").read_text() == stack_diagram()


def test_the_stack_diagram_is_the_route_setup_adds_and_the_guide_shows_it() -> None:
    drawn = stack_diagram()
    routes = [line for line in drawn.splitlines() if "─▶ backend" in line]
    # HAProxy tries rules in order: the proxy's SNI rule must come before the stack's own, and the rest stays
    assert [r.split("─▶ backend")[1].split()[0] for r in routes] == ["mtproxy", "site", "xray"], drawn
    assert "127.0.0.1:8444 send-proxy-v2" in routes[0] and "SNI www.example.com" in routes[0]
    assert "any other SNI" in routes[-1] and "127.0.0.1:8443" in routes[-1]
    assert "the mask, www.example.com:443" in drawn  # no stack site serves the domain: setup's default mask
    assert "mtproxy" not in STACK_HAPROXY  # drawn from what setup adds, not from a config that has it already
    guide = (REPO / "docs" / "mtproxy" / "user_guide.md").read_text(encoding="utf-8")
    assert f"```text\n{drawn}```" in guide, "docs/mtproxy/user_guide.md section 2 should show pictures/stack.txt"


def test_the_committed_pictures_are_what_the_script_makes(tmp_path: Path) -> None:
    check_pictures(COMMITTED, tmp_path)


@pytest.mark.netns
def test_the_script_makes_the_pictures_from_the_real_tools(tmp_path: Path) -> None:
    out = tmp_path / "pictures"
    made = subprocess.run([str(REPO / "scripts" / "doc-pictures"), str(out)], capture_output=True, text=True,
                          timeout=240, check=False)
    assert made.returncode == 0, made.stderr[-3000:]
    assert sorted(made.stdout.split()) == sorted(str(out / name) for name in FILES)
    check_pictures(out, tmp_path)
    # each run makes new secrets: the pictures differ, the links' form does not
    assert (out / "link.txt").read_text() != (COMMITTED / "link.txt").read_text()
