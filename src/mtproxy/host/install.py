"""Install and remove the proxy on a host: checks first, then steps that each know how to undo themselves.

The setup wizard (cli/setup.py) only gathers answers into an `InstallPlan`; everything that changes the
host happens here, in order, with progress lines, and is rolled back in reverse order when a step fails.
What was installed is recorded in <root>/mtproxy/install.json so uninstall removes exactly that.
"""

from __future__ import annotations

import os
import shutil
import socket
import sysconfig
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..defaults import DEFAULT_STATS_PORT
from ..paths import Paths
from ..store import write_atomic
from . import docker, fail2ban, haproxy, systemd, templates, ufw
from . import image as image_build
from .files import remove_file, write_file
from .haproxy import Integration
from .layout import HostLayout
from .ports import bind_error, suggest_free
from .record import HaproxyRecord, InstallRecord, ownership
from .runner import CommandError, Runner
from .service import foreign_service, service_state

MANAGERS = ("docker", "systemd", "none")
UFW_MODES = ("limit", "allow", "skip")


class InstallError(Exception):
    """A check or a step failed; `todo` says what the operator can do about it."""

    def __init__(self, what: str, todo: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.todo = todo


@dataclass(frozen=True)
class InstallPlan:
    root: Path
    port: int
    workers: int
    secret_type: str  # "ee", "dd" or "plain"
    domain: str | None
    server: str | None
    ufw_mode: str = "limit"
    manager: str = "docker"
    image: str = docker.DEFAULT_IMAGE
    build_script: Path | None = None  # a checkout's build-image.sh; None: the packaged build step
    local_base: bool = False
    verify_timeout: float = 60.0
    stats_port: int = DEFAULT_STATS_PORT
    # Behind the stack's HAProxy: `port` is then the loopback port the proxy listens on, and clients dial
    # the HAProxy frontend's port, which routes the fake-TLS domain's SNI here with a PROXY v2 header.
    haproxy: Integration | None = None
    mask: str | None = None  # HOST:PORT for the settings' `mask`; None leaves the settings' mask as it is

    @property
    def public_port(self) -> int:
        """The port in links: HAProxy's when behind it, else the proxy's own."""
        return self.haproxy.public_port if self.haproxy is not None else self.port


class Progress:
    """`[n/total] what … ok` lines; the wizard's only output channel while it changes the host."""

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = total
        self.done = 0

    def start(self, what: str) -> None:
        self.done += 1
        self.out.write(f"[{self.done}/{self.total}] {what} … ")
        self.out.flush()

    def finish(self, note: str = "ok") -> None:
        self.out.write(f"{note}\n")
        self.out.flush()


@dataclass
class Transaction:
    """Undo actions of the steps done so far; `rollback` runs them newest first and never raises."""

    undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def add(self, what: str, action: Callable[[], object]) -> None:
        self.undo.append((what, action))

    def rollback(self, out: TextIO) -> None:
        for what, action in reversed(self.undo):
            try:
                action()
                out.write(f"  undone: {what}\n")
            except Exception as exc:  # rollback must go on; say what is left behind
                out.write(f"  could not undo {what}: {exc}\n")
        self.undo.clear()


def snapshot(path: Path) -> Callable[[], None]:
    """An undo that puts the file back as it is now (or removes it if it does not exist yet)."""
    try:
        before: bytes | None = path.read_bytes()
        st = path.stat()
    except FileNotFoundError:
        before = None

    def restore() -> None:
        if before is None:
            remove_file(path)
        else:
            write_atomic(path, before, st.st_mode & 0o7777)
            os.chown(path, st.st_uid, st.st_gid)

    return restore


def port_problem(port: int, own_port: int | None, runner: Runner) -> str | None:
    """Bind the port as the proxy will (0.0.0.0 and ::); our own running proxy on it is not a conflict."""
    problem = bind_error(port)
    if problem is None or port != own_port:
        return problem
    current = docker.state(runner) if runner.available("docker") else None
    return None if current is not None and current.status == "running" else problem


def choose_manager(requested: str | None, runner: Runner, image: str = docker.DEFAULT_IMAGE,
                   local_base: bool = False) -> tuple[str, str]:
    """The service manager to install, and a note to show when the default (Docker) cannot be used — no
    engine, or the image is missing and cannot be built here — and the systemd unit is installed instead.
    An explicit choice is kept (host_checks then says what is missing)."""
    if requested is not None:
        return requested, ""
    problem = docker.engine_problem(runner)
    if problem is None and not docker.image_exists(runner, image):
        build = image_build.build_problem(runner, local_base)
        problem = f"the image {image} is missing and cannot be built here: {build}" if build else None
    if problem is None:
        return "docker", ""
    if systemd.available(runner):
        return "systemd", f"Docker cannot be used ({problem}): installing the systemd unit instead"
    return "docker", ""  # neither: host_checks reports Docker's problem


def host_checks(manager: str, image: str, build_script: Path | None, local_base: bool, runner: Runner) -> str:
    """Root, the service manager, and for Docker the image (present, or buildable here). Runs before the
    wizard's first question. Raises InstallError; returns a note about the image ("" when none)."""
    if os.geteuid() != 0:
        raise InstallError("setup must run as root (it writes under /etc and manages the firewall)",
                           "run it again with sudo")
    if manager == "docker":
        problem = docker.engine_problem(runner)
        if problem:
            raise InstallError(problem, "install Docker (https://docs.docker.com/engine/install/) or use "
                                        "--manager systemd")
        if docker.image_exists(runner, image):
            return ""
        if build_script is not None:
            if not build_script.is_file():
                raise InstallError(f"the build script {build_script} does not exist", "pass a valid --build-script")
            return f"the image {image} is not here: {build_script} will build it"
        problem = image_build.build_problem(runner, local_base)
        if problem:
            raise InstallError(f"the image {image} does not exist and cannot be built here: {problem}",
                               "pass --image with an existing image, or use --manager systemd")
        return f"the image {image} is not here: it will be built from this installed package (a few minutes)"
    if manager == "systemd" and not systemd.available(runner):
        raise InstallError("systemd is not running on this host", "use --manager docker")
    return ""


def preflight(plan: InstallPlan, runner: Runner, layout: HostLayout) -> list[str]:
    """Everything checked before anything changes. Raises InstallError; returns warnings."""
    warnings: list[str] = []
    host_checks(plan.manager, plan.image, plan.build_script, plan.local_base, runner)
    foreign = foreign_service(runner, layout, plan.manager)
    if foreign:
        raise InstallError(foreign, "uninstall that one first (mtproxy-uninstall --root <its root>), or run "
                                    "setup with its root")
    record = ownership(Paths(plan.root), layout).record  # another root's port is no "own port"
    problem = port_problem(plan.port, record.port if record else None, runner)
    if problem:
        free = suggest_free({plan.port, plan.stats_port})
        raise InstallError(f"port {plan.port} cannot be used: {problem}",
                           f"choose another port (for example {free})" if free else "choose another port")
    if plan.ufw_mode != "skip" and not runner.available("ufw"):
        warnings.append(f"ufw is not installed: no firewall rule added (open {plan.port}/tcp in your firewall)")
    if not runner.available("fail2ban-client"):
        warnings.append("fail2ban is not installed: the jail and filter are written but nothing enforces them")
    return warnings


@dataclass(frozen=True)
class Owner:
    """Who the proxy runs as: the files and directories it reads and writes are given to them."""

    uid: int
    gid: int
    user_created: bool = False  # this run added the system user


def service_owner(plan: InstallPlan, runner: Runner, txn: Transaction) -> Owner:
    """The image's fixed uid under Docker; the unit's `mtproxy` system user under systemd (added when the
    host lacks it, and deleted again if the install rolls back); root when nothing runs the proxy."""
    if plan.manager == "docker":
        return Owner(templates.CONTAINER_UID, templates.CONTAINER_UID)
    if plan.manager == "systemd":
        uid, gid, created = systemd.ensure_user(runner)
        if created:
            txn.add(f"the system user {systemd.USER}", lambda: systemd.remove_user(runner))
        return Owner(uid, gid, created)
    return Owner(0, 0)


def give_to(owner: Owner, files: Iterable[Path], mode: int | None = None) -> None:
    """chown (and optionally chmod) to the service's user: the one ownership path for every manager."""
    for path in files:
        os.chown(path, owner.uid, owner.gid)
        if mode is not None:
            os.chmod(path, mode)


def make_dirs(paths: Paths, layout: HostLayout, txn: Transaction, owner: Owner) -> None:
    for directory, mode, owned in (
        (paths.config_dir, 0o750, True),
        (paths.logs_dir, 0o750, True),
        (paths.data_dir, 0o750, True),
        (layout.compose_dir, 0o700, False),
    ):
        created = []
        missing = directory
        while not missing.exists():
            created.append(missing)
            missing = missing.parent
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, mode)
        if owned:
            give_to(owner, [directory])
        for path in created:
            txn.add(f"created {path}", _remover(path))


def _remover(directory: Path) -> Callable[[], None]:
    """An undo step that takes away a directory this transaction created, if it is still there."""

    def remove() -> None:
        if directory.exists():
            shutil.rmtree(directory)

    return remove


def installed_program(name: str) -> str:
    """The entry script installed with the running package (a venv's or pipx's bin/ is not always on PATH,
    and PATH may find another installation's script first); PATH when it is not there."""
    beside = Path(sysconfig.get_path("scripts")) / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name) or f"/usr/local/bin/{name}"


def _verify_port(port: int, timeout: float, sleep: Callable[[float], None] = time.sleep) -> None:
    """The port answers a TCP connect (the proxy accepted it)."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError as exc:
            last = exc
            sleep(0.5)
    raise InstallError(f"nothing answers on port {port} ({last})", "see `docker logs vless_mtproxy`")


def install_services(plan: InstallPlan, runner: Runner, layout: HostLayout, txn: Transaction,
                     progress: Progress, owner: Owner) -> tuple[list[str], bool]:
    """Compose/unit, UFW, fail2ban, logrotate, start and verify. Returns the files written and whether our
    UFW rule is in place (added by this or an earlier run)."""
    paths = Paths(plan.root)
    files: list[str] = []
    previous = ownership(paths, layout).record  # a copied root's record must not move the original's rule
    ufw_added = False
    log_file = paths.logs_dir / templates.LOG_NAME

    if plan.manager == "docker":
        progress.start(f"Writing the Compose service ({layout.compose_file})")
        txn.add("the Compose file", snapshot(layout.compose_file))
        write_file(layout.compose_file, templates.compose_file(plan.image, plan.root, plan.port, plan.stats_port),
                   0o644)
        files.append(str(layout.compose_file))
        progress.finish()
    elif plan.manager == "systemd":
        progress.start(f"Writing the systemd unit ({layout.systemd_unit})")
        txn.add("the systemd unit", lambda: systemd.remove(runner, layout))
        mtproxy_bin = installed_program("mtproxy")
        systemd.install(runner, layout, mtproxy_bin, plan.port, systemd.USER)
        files.append(str(layout.systemd_unit))
        progress.finish()

    progress.start(f"Firewall: ufw {plan.ufw_mode} {plan.port}/tcp")
    if plan.ufw_mode == "skip" or not runner.available("ufw"):
        progress.finish("skipped")
    else:
        if previous is not None and previous.ufw_added and previous.port != plan.port:
            # A re-run on a new port: our tagged rule for the old port goes (the operator's rules stay).
            if ufw.remove_rule(runner, previous.port):
                txn.add(f"the UFW rule for {previous.port}",
                        lambda: ufw.add_rule(runner, previous.port, previous.ufw_mode))
        if ufw.add_rule(runner, plan.port, plan.ufw_mode):
            txn.add("the UFW rule", lambda: ufw.remove_rule(runner, plan.port))
            ufw_added = True
            progress.finish("added")
        elif ufw.has_rule(runner, plan.port, plan.ufw_mode):
            ufw_added = previous is not None and previous.ufw_added and previous.port == plan.port
            progress.finish("already there")
        else:
            progress.finish("the operator's own rule for this port is kept; none added")

    progress.start("fail2ban jail and filter, logrotate")
    for path in (layout.fail2ban_filter, layout.fail2ban_jail, layout.logrotate):
        txn.add(str(path), snapshot(path))
    # the port clients connect to, where a ban must block them: behind HAProxy its public port, not ours
    fail2ban.install(runner, layout, log_file, plan.public_port)
    give_to(owner, [log_file])
    write_file(layout.logrotate, templates.logrotate(paths.logs_dir), 0o644)
    files += [str(layout.fail2ban_filter), str(layout.fail2ban_jail), str(layout.logrotate)]
    progress.finish()

    if plan.manager == "docker":
        progress.start(f"Image {plan.image}")
        if docker.image_exists(runner, plan.image):
            progress.finish("present")
        else:
            image_build.build(runner, plan.image, plan.local_base, plan.build_script)
            txn.add(f"the image {plan.image}", lambda: docker.remove_image(runner, plan.image))
            progress.finish("built")
        progress.start("Starting the container vless_mtproxy")
        txn.add("the container", lambda: docker.compose_down(runner, layout.compose_file))
        docker.compose_up(runner, layout.compose_file)
        if runner.dry_run:
            progress.finish("(dry run)")
            return files, ufw_added
        try:
            docker.wait_healthy(runner, timeout=plan.verify_timeout)
        except TimeoutError as exc:
            raise InstallError(str(exc), "its last log lines:\n" + docker.logs_tail(runner)) from None
        progress.finish("healthy")
    if plan.manager != "none" and not runner.dry_run:
        progress.start(f"Checking that port {plan.port} answers")
        _verify_port(plan.port, plan.verify_timeout)
        progress.finish()
    return files, ufw_added


def route_through_haproxy(plan: InstallPlan, runner: Runner, txn: Transaction, progress: Progress,
                          domains: list[str], previous: InstallRecord | None,
                          domain_base: str | None = None) -> HaproxyRecord | None:
    """Add (or update) our block in HAProxy's config after the proxy answers on its port; take away the block
    an earlier run put in a file this run no longer uses. Each change is undone if a later step fails."""
    earlier = previous.haproxy if previous is not None else None
    if earlier is not None and (plan.haproxy is None or Path(earlier.config) != plan.haproxy.config):
        progress.start(f"HAProxy: removing the mtproxy rules from {earlier.config}")
        _change_haproxy(runner, txn, Path(earlier.config), haproxy.Control(earlier.check, earlier.reload),
                        lambda text: haproxy.without_block(text))
        progress.finish()
    if plan.haproxy is None:
        return None
    hp = plan.haproxy
    names = [*([f"*.{domain_base}"] if domain_base else []), *domains]
    progress.start(f"HAProxy: SNI {', '.join(names)} on port {hp.public_port} to 127.0.0.1:{plan.port} "
                   f"({hp.config})")
    changed = _change_haproxy(runner, txn, hp.config, hp.control,
                              lambda text: haproxy.with_block(text, domains, plan.port, hp.public_port, domain_base))
    progress.finish("checked and reloaded" if changed else "already in place")
    return HaproxyRecord(str(hp.config), hp.public_port, hp.control.check, hp.control.reload)


def _change_haproxy(runner: Runner, txn: Transaction, config: Path, ctl: haproxy.Control,
                    edit: Callable[[str], str]) -> bool:
    before = haproxy.read_config(config)  # bytes decoded as they are: CRLF files come back byte for byte
    changed = haproxy.replace_checked(runner, config, edit(before), ctl)
    if changed:
        txn.add(f"the mtproxy rules in {config}", lambda: haproxy.replace_checked(runner, config, before, ctl))
    return changed


def uninstall(runner: Runner, paths: Paths, layout: HostLayout, purge: bool, out: TextIO) -> list[str]:
    """Remove what setup installed (its install record says what); keep the secrets (config/) unless `purge`.
    With runner.dry_run nothing is removed, only reported. Returns what was (or would be) removed."""
    own = ownership(paths, layout)
    record = own.record
    dry = runner.dry_run
    removed: list[str] = []

    def note(what: str) -> None:
        removed.append(what)
        out.write(f"  {'would remove' if dry else 'removed'} {what}\n")

    if record is None:
        out.write(f"  {own.problem}: no container, unit or image, nothing under {layout.etc} and no firewall "
                  "rule is touched\n")
    # Docker is touched only for an installation this root's own record names: a Compose file alone is
    # no proof (a copied root carries the original's, and `compose down` by project name would remove the
    # original's container). The runner records the docker commands instead of running them in a dry run.
    ours = record is not None and record.manager == "docker"
    if record is not None and record.haproxy is not None:
        # First, so HAProxy never routes clients to a proxy that is already gone.
        config = Path(record.haproxy.config)
        ctl = haproxy.Control(record.haproxy.check, record.haproxy.reload)
        if haproxy.remove(runner, config, ctl):
            note(f"the mtproxy rules in {config} (HAProxy reloaded)")
    if ours and runner.available("docker") and docker.engine_problem(runner) is None:
        live = service_state(runner, layout, own)
        if live.state == "not ours":  # recreated by another root's setup: leave it to that root
            out.write(f"  {live.problem}: it is left alone\n")
            ours = False
    if ours and runner.available("docker") and docker.engine_problem(runner) is None:
        if layout.compose_file.exists():
            try:
                docker.compose_down(runner, layout.compose_file)
            except CommandError:
                pass  # fall through to removing the container by name
        if docker.remove_container(runner):
            note("container vless_mtproxy")
        elif layout.compose_file.exists():
            note("container vless_mtproxy (compose down)")
        image = record.image if record else docker.DEFAULT_IMAGE
        if docker.remove_image(runner, image):
            note(f"image {image}")
    if record is not None:
        listed = {Path(f) for f in record.files}
        if record.manager == "systemd" and layout.systemd_unit in listed and systemd.remove(runner, layout):
            note("systemd unit mtproxy.service")
        # After the unit is stopped (userdel refuses a user with running processes); only a user setup added.
        if record.user_created and (dry or systemd.remove_user(runner)):
            note(f"system user {systemd.USER}")
        if record.ufw_added and runner.available("ufw") and ufw.remove_rule(runner, record.port):
            note(f"UFW rule for {record.port}/tcp")
        f2b = {layout.fail2ban_jail, layout.fail2ban_filter} & listed
        for path in fail2ban.remove(runner, layout, f2b):
            note(str(path))
        for path in (*layout.completions.values(), layout.man_page):
            if path in listed and path.exists():
                if not dry:
                    remove_file(path)
                note(str(path))
        if layout.logrotate in listed and layout.logrotate.exists():
            if not dry:
                remove_file(layout.logrotate)
            note(str(layout.logrotate))
    for directory in (layout.compose_dir, paths.logs_dir, paths.data_dir, *([paths.config_dir] if purge else [])):
        if directory.exists():
            if not dry:
                shutil.rmtree(directory)
            note(str(directory))
    return removed
