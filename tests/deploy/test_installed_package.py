"""Setup from the installed package alone: a wheel installed into a fresh venv outside the checkout, and
`mtproxy-setup` run from another directory (no deploy/ to find), as a new operator would after `pip install`.

The venv sees the host's dependencies (--system-site-packages) but gets its own mtproxy from the wheel, with
PYTHONPATH removed, so nothing of the checkout is importable from it. The systemd case runs in a private
mount namespace where /run/systemd/system exists and fake systemctl/id/useradd/userdel come first on PATH
(the fake systemctl really starts the unit's ExecStart). The Docker case (-m docker) builds the image with
the build step shipped in the package, then runs the Compose service in the namespace of a holder container
on an --internal network (as test_image.py does).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.host import image
from mtproxy.testkit.process import free_port

from .conftest import REPO
from .test_systemd_user import _fakes

SYSTEMCTL = """#!{python}
import os, shlex, signal, subprocess, sys, time
from pathlib import Path
state = Path({state!r})
args = sys.argv[1:]
with (state / "calls.log").open("a") as f:
    f.write(" ".join(["systemctl", *args]) + "\\n")
pidfile = state / "engine.pid"

def stop():
    if pidfile.exists():
        pid = int(pidfile.read_text())
        pidfile.unlink()
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

if args[:1] == ["restart"]:
    stop()
    unit = Path(os.environ["MTPROXY_SYSCONF"]) / "systemd/system/mtproxy.service"
    command = next(l for l in unit.read_text().splitlines() if l.startswith("ExecStart=")).split("=", 1)[1]
    with (state / "calls.log").open("a") as f:
        f.write("exec " + command + "\\n")
    log = (state / "engine.log").open("ab")
    proc = subprocess.Popen(shlex.split(command), stdout=log, stderr=log, start_new_session=True)
    pidfile.write_text(str(proc.pid))
elif args[:2] == ["disable", "--now"]:
    stop()
"""


def _venv_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Nothing of the checkout: no PYTHONPATH (and no MTPROXY_* of the caller unless `base` sets them)."""
    env = dict(base) if base is not None else {k: v for k, v in os.environ.items() if not k.startswith("MTPROXY_")}
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with mtproxy installed from a wheel of this source tree (packed without network)."""
    work = tmp_path_factory.mktemp("venv")
    wheel = image.pack_wheel(work)
    target = work / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(target)], check=True, timeout=120)
    subprocess.run([str(target / "bin/pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300, env=_venv_env(), capture_output=True)
    where = subprocess.run([str(target / "bin/python"), "-c", "import mtproxy; print(mtproxy.__file__)"],
                           check=True, text=True, capture_output=True, timeout=60, env=_venv_env(), cwd=work)
    assert where.stdout.strip().startswith(str(target)), where.stdout  # the wheel's copy, not the checkout's
    return target


def test_package_data_ships_every_template() -> None:
    """What a wheel built by pip carries: every file under templates/ (the image's build step included)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["mtproxy"]
    top = REPO / "src/mtproxy"
    files = [p.relative_to(top).as_posix() for p in (top / "templates").rglob("*") if p.is_file()]
    assert "templates/docker/Dockerfile" in files and "templates/docker/build-image.sh" in files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and "/" not in f[len(g) - 1:] for g in globs)]
    assert missing == []


def test_deploy_docker_is_the_packaged_build_step() -> None:
    for name in ("Dockerfile", "build-image.sh"):
        assert (REPO / "deploy/docker" / name).resolve() == REPO / "src/mtproxy/templates/docker" / name


def test_packaged_build_step_outside_a_checkout_needs_a_wheel(venv: Path, tmp_path: Path) -> None:
    script = next(venv.glob("lib/python*/site-packages/mtproxy/templates/docker/build-image.sh"))
    result = subprocess.run(["bash", str(script), "--tag", "mtproxy:never"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env=_venv_env())
    assert result.returncode == 2 and "pass --wheel FILE" in result.stderr


def _in_mount_namespace(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """/run replaced by a tmpfs holding /run/systemd/system (systemd 'running'; Docker's socket is hidden)."""
    prelude = "mount --make-rprivate / && mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && "
    return subprocess.run(["unshare", "-m", "--", "bash", "-c", prelude + script], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


@pytest.mark.netns
def test_setup_from_a_venv_falls_back_to_systemd_and_runs_the_venvs_mtproxy(venv: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a private mount namespace)")
    env = _venv_env(_fakes(tmp_path, {}))
    (tmp_path / "bin/systemctl").write_text(SYSTEMCTL.format(python=sys.executable, state=str(tmp_path)))
    decoy = tmp_path / "bin/mtproxy"  # another installation's mtproxy first on PATH: not the one to run
    decoy.write_text("#!/bin/sh\nexit 1\n")
    decoy.chmod(0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    root, etc = tmp_path / "root", tmp_path / "etc"
    try:
        result = _in_mount_namespace(
            f"{venv}/bin/mtproxy-setup -n --root {root} --port {port} --type dd --ufw skip --server 192.0.2.1"
            f" && {venv}/bin/mtproxy-uninstall --yes --root {root}", env, elsewhere)
        out = result.stdout + result.stderr
        engine_log = tmp_path / "engine.log"
        assert result.returncode == 0, out + (engine_log.read_text(errors="replace") if engine_log.exists() else "")
        # Docker is not usable in there: said before the first step, and the unit is installed instead.
        assert "Docker cannot be used" in out and "installing the systemd unit instead" in out
        assert out.index("installing the systemd unit instead") < out.index("[1/")
        assert f"Checking that port {port} answers … ok" in out  # the venv's engine really served it
        assert "mtproxy is installed." in out and "removed systemd unit mtproxy.service" in out
        calls = (tmp_path / "calls.log").read_text()
        assert "systemctl restart mtproxy" in calls and "systemctl disable --now mtproxy" in calls
        assert f"exec {venv}/bin/mtproxy run --root {root} " in calls  # the unit runs the venv's mtproxy
        assert json.loads((root / "config/mtproxy/mtproxy_secrets.json").read_text())["secrets"]
        assert not (etc / "systemd/system/mtproxy.service").exists()
    finally:
        pidfile = tmp_path / "engine.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


# ---- Docker: the image built by setup itself, from the installed package ----

VENV_IMAGE = "mtproxy:venvtest"

SHIM_DOCKER = """#!/bin/sh
# `docker compose` (v2) is hidden so setup uses the docker-compose shim below.
[ "$1" = compose ] && exit 1
exec {docker} "$@"
"""

SHIM_COMPOSE = """#!{python}
import os, sys
args = sys.argv[1:]
i = args.index("-f") + 2  # after the wizard's own -f FILE: our override
os.execv({compose!r}, [{compose!r}, *args[:i], "-f", {override!r}, *args[i:]])
"""


def _sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def _dependency_wheels(dest: Path) -> None:
    """The dependency wheels the image needs, fetched once here so setup's build then runs with no index."""
    platforms = [a for minor in range(17, 37) for a in ("--platform", f"manylinux_2_{minor}_x86_64")]
    constraints = dest / "constraints.txt"
    pins = image.installed_constraints()
    constraints.write_text(pins)
    # every installed dependency, transitively: a new dependency of the package needs no edit here
    names = [line.split("==", 1)[0] for line in pins.splitlines()]
    _sh(sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
        "--implementation", "cp", *platforms, "--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64",
        "-c", str(constraints), "-d", str(dest), *names, "pip", timeout=600)


@pytest.fixture
def docker_host(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(the holder container's pid, an environment whose docker/docker-compose run the service in it)."""
    if shutil.which("docker") is None or _sh("docker", "info", check=False).returncode != 0:
        pytest.skip("no Docker engine")
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed")
    if not _sh("docker", "image", "ls", "-q", "mtproxy-base", check=False).stdout.strip():
        # The debootstrapped base is built once (and shared with test_image.py); it needs the Debian mirror.
        _sh("bash", str(REPO / "deploy/docker/build-image.sh"), "--local-base", "--tag", "mtproxy:test",
            timeout=900)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _dependency_wheels(wheels)
    tag = uuid.uuid4().hex[:8]
    net, holder = f"mtpvenv-{tag}", f"mtpvenv-host-{tag}"
    _sh("docker", "network", "create", "--internal", net)
    try:
        base = _sh("docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "mtproxy-base").stdout.split()[0]
        _sh("docker", "run", "-d", "--name", holder, "--network", net, "--entrypoint", "sleep", base, "600")
        pid = _sh("docker", "inspect", "--format", "{{.State.Pid}}", holder).stdout.strip()
        override = tmp_path / "override.yml"
        override.write_text(f'version: "3.8"\nservices:\n  vless_mtproxy:\n    network_mode: "container:{holder}"\n')
        bindir = tmp_path / "shims"
        bindir.mkdir()
        (bindir / "docker").write_text(SHIM_DOCKER.format(docker=shutil.which("docker")))
        (bindir / "docker-compose").write_text(SHIM_COMPOSE.format(python=sys.executable, compose=compose,
                                                                  override=str(override)))
        for shim in bindir.iterdir():
            shim.chmod(0o755)
        env = _venv_env()
        env.update(PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}", MTPROXY_SYSCONF=str(tmp_path / "etc"),
                   PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels))
        yield pid, env
    finally:
        _sh("docker", "rm", "-f", "vless_mtproxy", holder, check=False)
        _sh("docker", "image", "rm", "-f", VENV_IMAGE, check=False)
        _sh("docker", "network", "rm", net, check=False)


@pytest.mark.docker
def test_setup_from_a_venv_builds_the_image_from_the_installed_package(
        venv: Path, tmp_path: Path, docker_host: tuple[str, dict[str, str]]) -> None:
    pid, env = docker_host
    _sh("docker", "image", "rm", "-f", VENV_IMAGE, check=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "root"
    port = 8443
    in_holder = ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]
    started = time.monotonic()
    result = subprocess.run(
        [*in_holder, str(venv / "bin/mtproxy-setup"), "-n", "--manager", "docker", "--image", VENV_IMAGE,
         "--local-base", "--root", str(root), "--port", str(port), "--type", "dd", "--ufw", "skip",
         "--server", "192.0.2.1"], capture_output=True, text=True, timeout=1200, env=env, cwd=elsewhere)
    out = result.stdout + result.stderr
    print(f"\nsetup with the image build: {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, out
    assert f"the image {VENV_IMAGE} is not here: it will be built from this installed package" in out
    assert out.index("will be built") < out.index("[1/")  # said before anything changed
    assert f"Image {VENV_IMAGE} … built" in out and "vless_mtproxy … healthy" in out
    assert f"Checking that port {port} answers … ok" in out
    # The image runs the code of the wheel that was installed (the venv's), with its build step inside.
    listed = _sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", VENV_IMAGE, "-c",
                 "import mtproxy, importlib.metadata as m; print(mtproxy.__file__, m.version('mtproxy'))").stdout
    assert listed.startswith("/opt/mtproxy/lib/mtproxy/__init__.py")

    gone = subprocess.run([*in_holder, str(venv / "bin/mtproxy-uninstall"), "--yes", "--root", str(root)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=elsewhere)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert "removed container vless_mtproxy" in gone.stdout and f"removed image {VENV_IMAGE}" in gone.stdout


def test_questions_come_after_the_host_checks(tmp_path: Path) -> None:
    """An interactive run on a host whose Docker does not answer stops before asking anything."""
    from .test_wizard import Terminal, _env

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    (bindir / "docker").chmod(0o755)
    env = _env(tmp_path, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    term = Terminal([sys.executable, "-m", "mtproxy.cli.main", "setup", "--manager", "docker"], env)
    term.expect("Docker engine does not answer")
    code = term.finish()
    assert code == 1, term.screen
    assert "Install the MTProxy add-on now?" not in term.screen
    assert not (tmp_path / "root").exists()



FAKE_DOCKER = """#!/bin/sh
# An engine that answers, without the image and without a cached local base.
case "$1 $2" in
  "info "*) echo 27.0.0 ;;
  "image inspect") echo "No such image: $3" >&2; exit 1 ;;
  "image ls") ;;
  *) exit 1 ;;
esac
"""


def test_default_falls_back_to_systemd_when_the_image_cannot_be_built(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker answers but the image is missing and --local-base has no debootstrap: without --manager the
    wizard installs the systemd unit and says why, before anything is asked or changed."""
    if os.geteuid() != 0:
        pytest.skip("setup runs as root")
    import io

    from mtproxy.cli import setup
    from mtproxy.host import install, systemd
    from mtproxy.host.runner import Runner

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER)
    (bindir / "docker").chmod(0o755)
    path = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    runner = Runner(dry_run=True, env={**os.environ, "PATH": path},
                    which=lambda name: None if name == "debootstrap" else shutil.which(name, path=path))
    monkeypatch.setattr(systemd, "available", lambda runner: True)

    manager, note = install.choose_manager(None, runner, "mtproxy:absent", local_base=True)
    assert manager == "systemd"
    assert "the image mtproxy:absent is missing and cannot be built here" in note and "debootstrap" in note
    assert install.choose_manager("docker", runner, "mtproxy:absent", local_base=True) == ("docker", "")

    env = {"MTPROXY_SYSCONF": str(tmp_path / "etc"), "PATH": path}
    out = io.StringIO()
    argv = ["-n", "--root", str(tmp_path / "root"), "--image", "mtproxy:absent", "--local-base", "--type", "dd",
            "--ufw", "skip", "--port", str(free_port()), "--server", "192.0.2.1", "--dry-run"]
    assert setup.main(argv, env=env, stdin=io.StringIO(), stdout=out, runner=runner) == 0, out.getvalue()
    text = out.getvalue()
    assert text.startswith("note: Docker cannot be used (the image mtproxy:absent is missing")
    assert "dry run: would install systemd" in text
    # With --manager docker the same host is refused, before any question, with what to do.
    out, err = io.StringIO(), io.StringIO()
    assert setup.main([*argv, "--manager", "docker"], env=env, stdin=io.StringIO(), stdout=out, runner=runner,
                      stderr=err) == 1
    refusal = err.getvalue()  # one line on stderr through the CLI's edge
    assert refusal.startswith("mtproxy-setup: ") and refusal.count("\n") == 1, refusal
    assert "cannot be built here" in refusal and "--manager systemd" in refusal


class _EggInfo:
    """What importlib.metadata finds for a checkout after an in-tree build: src/mtproxy.egg-info (PKG-INFO)."""

    def __init__(self, pkg_info: str | None) -> None:
        self.files = {"PKG-INFO": pkg_info, "entry_points.txt": "[console_scripts]\nmtproxy = mtproxy.cli.entry:main\n"}

    def read_text(self, name: str) -> str | None:
        return self.files.get(name)

    def locate_file(self, path: str) -> Path:
        return Path("/checkout/src") / path


def test_packed_wheel_takes_egg_info_metadata_and_records_every_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import hashlib
    import zipfile

    from mtproxy import __version__

    monkeypatch.setattr(image, "_distribution", lambda: _EggInfo("Metadata-Version: 2.1\nName: mtproxy\nVersion: 0\n"))
    wheel = image.pack_wheel(tmp_path)
    info = f"mtproxy-{__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        assert f"Version: {__version__}\n" in archive.read(f"{info}/METADATA").decode()
        record = archive.read(f"{info}/RECORD").decode().splitlines()
        names = set(archive.namelist())
        for line in record:
            name, digest, size = line.rsplit(",", 2)
            if name == f"{info}/RECORD":
                continue
            data = archive.read(name)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)
        assert {line.rsplit(",", 2)[0] for line in record} == names
        assert "mtproxy/templates/docker/build-image.sh" in names
    monkeypatch.setattr(image, "_distribution", lambda: _EggInfo(None))
    with pytest.raises(ValueError, match="no version"):
        image.pack_wheel(tmp_path / "again")
