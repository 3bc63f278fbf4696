"""The operator's guide's backup, upgrade and rollback commands, run as written against a Docker install in a
temporary root: the store and the secrets survive both ways and the service runs the image each step names.

The commands are read from docs/mtproxy/user_guide.md (section 10), so the test follows the page; they run
with `sudo` dropped (the test is root), /opt/vless replaced by the temporary root and the image tags
replaced by this test's own. The new release is the image the project's build script makes (`mtproxy:test`,
built by test_image.py's fixture or here when missing: the build command itself is timed there); the
previous release is a copy of it with one label more, so the two differ and a container shows which one it
runs. The service runs in the network namespace of a holder container on an --internal network, as in
test_installed_package.py, and setup runs in that namespace too, so its port check reaches the proxy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..docs.test_doc_commands import PROGRAMS, commands
from .conftest import REPO
from .test_installed_package import SHIM_COMPOSE, SHIM_DOCKER

pytestmark = pytest.mark.docker
RELEASE = "mtproxy:test"  # what deploy/docker/build-image.sh makes for the docker tests
GUIDE = REPO / "docs/mtproxy/user_guide.md"


def _sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def _guide_line(*needles: str) -> str:
    """The one shell command of the guide that contains every needle."""
    found = [line for line in commands(GUIDE.read_text(encoding="utf-8")) if all(n in line for n in needles)]
    assert len(found) == 1, f"the guide should show exactly one command with {needles}: {found}"
    return found[0]


@dataclass
class Host:
    run: list[str]  # the prefix that runs a command in the holder's network namespace
    env: dict[str, str]
    root: Path
    work: Path  # the operator's working directory (where the backup archive goes)
    old: str
    new: str

    def sh(self, line: str, timeout: float = 300) -> str:
        """Run a shell line as the operator would; its output, after asserting it succeeded."""
        done = subprocess.run([*self.run, "bash", "-c", line], capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=self.work, check=False)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"`{line}` exited {done.returncode}:\n{out[-4000:]}"
        return out

    def as_documented(self, line: str) -> str:
        """A guide command for this host: no sudo, the temporary root, this test's image tags."""
        line = line.split("  #", 1)[0].strip()
        return (line.replace("sudo ", "").replace("/opt/vless", str(self.root))
                .replace("mtproxy:new", self.new).replace("mtproxy:local", self.old))


def _image_id(name: str) -> str:
    return _sh("docker", "image", "inspect", "--format", "{{.Id}}", name).stdout.strip()


def _running_image() -> tuple[str, str]:
    """(the image name the service was started with, the id of the image it runs)."""
    name, image_id = _sh("docker", "inspect", "--format", "{{.Config.Image}} {{.Image}}",
                         "vless_mtproxy").stdout.split()
    return name, image_id


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    if shutil.which("docker") is None or _sh("docker", "info", check=False).returncode != 0:
        pytest.skip("no Docker engine")
    compose = shutil.which("docker-compose")
    if compose is None or shutil.which("nsenter") is None or os.geteuid() != 0:
        pytest.skip("needs docker-compose, nsenter and root")
    if _sh("docker", "image", "inspect", RELEASE, check=False).returncode != 0:
        _sh(str(REPO / "deploy/docker/build-image.sh"), "--local-base", "--tag", RELEASE, timeout=1800)
    tag = uuid.uuid4().hex[:8]
    old, new = f"mtproxy:before-{tag}", f"mtproxy:after-{tag}"
    net, holder = f"mtpupg-{tag}", f"mtpupg-host-{tag}"
    # The previous release: the same software with one label more, a different image.
    subprocess.run(["docker", "build", "-q", "-t", old, "-"], input=f"FROM {RELEASE}\nLABEL mtproxy.test={tag}\n",
                   check=True, capture_output=True, text=True, timeout=120)
    _sh("docker", "tag", RELEASE, new)
    _sh("docker", "network", "create", "--internal", net)
    try:
        _sh("docker", "run", "-d", "--name", holder, "--network", net, "--entrypoint", "sleep", RELEASE, "900")
        pid = _sh("docker", "inspect", "--format", "{{.State.Pid}}", holder).stdout.strip()
        override = tmp_path / "override.yml"
        override.write_text(f'version: "3.8"\nservices:\n  vless_mtproxy:\n    network_mode: "container:{holder}"\n')
        bindir = tmp_path / "bin"
        bindir.mkdir()
        (bindir / "docker").write_text(SHIM_DOCKER.format(docker=shutil.which("docker")))
        (bindir / "docker-compose").write_text(SHIM_COMPOSE.format(python=sys.executable, compose=compose,
                                                                  override=str(override)))
        for name, entry in PROGRAMS.items():  # the checkout's programs, as `pip install` would put them
            (bindir / name).write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.argv[0] = "
                                       f"\"{name}\"; {entry}; main()' \"$@\"\n")
        for shim in bindir.iterdir():
            shim.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTPROXY_")}
        env.update(PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}", MTPROXY_ROOT=str(tmp_path / "root"),
                   MTPROXY_SYSCONF=str(tmp_path / "etc"), NO_COLOR="1",
                   PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""))
        work = tmp_path / "work"
        work.mkdir()
        yield Host(["nsenter", f"--net=/proc/{pid}/ns/net", "--"], env, tmp_path / "root", work, old, new)
    finally:
        _sh("docker", "rm", "-f", "vless_mtproxy", holder, check=False)
        _sh("docker", "image", "rm", old, new, check=False)
        _sh("docker", "network", "rm", net, check=False)


def _store(root: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((root / "config/mtproxy/mtproxy_secrets.json").read_text())
    return doc


SERVED = """
import json, sys
from pathlib import Path
from mtproxy.operations.proxy_control import compare, fetch_engine
from mtproxy.store import parse_store
store = Path(sys.argv[1])
engine = fetch_engine(8888)
verdict = compare(engine, parse_store(store.read_bytes(), store)) if engine else None
print(json.dumps([bool(verdict and verdict.ok), verdict.detail if verdict else "no engine answers"]))
"""


def _serves_the_store(host: Host) -> str:
    """Does the running engine serve exactly the store's active secrets (count and digest, from /stats.json)?"""
    store = host.root / "config/mtproxy/mtproxy_secrets.json"
    ok, detail = json.loads(host.sh(f"{sys.executable} -c '{SERVED}' {store}").strip().splitlines()[-1])
    assert ok, detail
    return str(detail)


def test_the_guides_upgrade_and_rollback_keep_the_store_and_switch_the_image(host: Host) -> None:
    root = host.root
    assert _image_id(host.old) != _image_id(host.new)  # so the container shows which one it runs
    out = host.sh(f"mtproxy-setup -n --manager docker --image {host.old} --type ee --domain www.example.com "
                  "--server proxy.example.org --port 8443 --ufw skip")
    assert "vless_mtproxy … healthy" in out and "Checking that port 8443 answers … ok" in out, out
    host.sh("mtproxy add-secret --label alice && mtproxy set-limits alice --max-connections 8 --quota 20G")
    before = _store(root)
    links = (root / "data/mtproxy/mtproxy_link.txt").read_text()
    ids = sorted(str(s["id"]) for s in before["secrets"])  # type: ignore[attr-defined]
    assert len(ids) == 2 and _running_image() == (host.old, _image_id(host.old))
    assert "2 active secret(s)" in _serves_the_store(host)

    host.sh(host.as_documented(_guide_line("tar", "-czf", "mtproxy-backup.tar.gz")))
    assert (host.work / "mtproxy-backup.tar.gz").stat().st_size > 0

    out = host.sh(host.as_documented(_guide_line("mtproxy-setup", "--image mtproxy:new")))
    assert "vless_mtproxy … healthy" in out and "Checking that port 8443 answers … ok" in out, out
    assert _running_image() == (host.new, _image_id(host.new))
    assert _store(root)["secrets"] == before["secrets"]  # the same secrets, limits and all
    assert (root / "data/mtproxy/mtproxy_link.txt").read_text() == links  # the links users hold still work
    assert "2 active secret(s)" in _serves_the_store(host)
    assert json.loads((root / "mtproxy/install.json").read_text())["image"] == host.new  # later runs keep it

    host.sh("mtproxy remove-secret alice --yes")  # a change after the upgrade, which the rollback undoes
    out = host.sh(host.as_documented(_guide_line("-xzf", "mtproxy-setup", "--image")))
    assert "vless_mtproxy … healthy" in out and "Checking that port 8443 answers … ok" in out, out
    assert _running_image() == (host.old, _image_id(host.old))
    assert _store(root)["secrets"] == before["secrets"]
    assert (root / "data/mtproxy/mtproxy_link.txt").read_text() == links
    assert "2 active secret(s)" in _serves_the_store(host)
    assert json.loads((root / "mtproxy/install.json").read_text())["image"] == host.old
