"""`mtproxy-setup` / `mtproxy setup`: the install wizard (prompts or flags and MTPROXY_* variables)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..defaults import DEFAULT_PORT, DEFAULT_WORKERS
from ..host import docker, haproxy, systemd, templates
from ..host.files import write_file
from ..host.install import (
    MANAGERS,
    UFW_MODES,
    InstallError,
    InstallPlan,
    Progress,
    Transaction,
    choose_manager,
    give_to,
    host_checks,
    install_services,
    installed_program,
    make_dirs,
    port_problem,
    preflight,
    route_through_haproxy,
    service_owner,
    snapshot,
)
from ..host.layout import HostLayout
from ..host.record import InstallRecord, ownership
from ..host.runner import CommandError, Runner
from ..operations.haproxy_routes import routed_domains
from ..paths import Paths
from ..protocol.secret import SecretKind, generate_secret
from ..settings import Settings, check_mask, read_settings, update_settings
from ..store import SecretRecord, StoreData, StoreError, now_iso, update_store
from ..usage import OneLineParser
from .edge import run_host_command
from .errors import CliError, ExitStatus
from .validation import (
    Checked,
    Invalid,
    check_domain,
    check_port,
    check_secret_type,
    check_server,
    check_ufw_mode,
    check_workers,
    port_number,
    whole_number,
)

if TYPE_CHECKING:
    from ..operations.artifacts import ServerChoice

TYPES = {"ee": SecretKind.FAKE_TLS, "dd": SecretKind.PADDED, "plain": SecretKind.CLASSIC}

UFW_EXPLAIN = (
    "UFW: `ufw limit` refuses a source address's 6th and later new connections within 30 seconds. Telegram apps open\n"
    "several connections at once and mobile users often share one address, so busy proxies may want a\n"
    "plain `allow` instead (fail2ban still bans addresses that send bad handshakes)."
)


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "y", "on")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="mtproxy-setup",
        description="Install mtproxy on this host: secret, Compose service (or systemd unit), UFW rule, "
                    "fail2ban jail, logrotate; then start it and print the link and QR code.",
        epilog="Examples:\n  mtproxy-setup\n  MTPROXY_PORT=2053 MTPROXY_DOMAIN=www.example.com "
               "mtproxy-setup --non-interactive\n  mtproxy-setup -n --port 8444 --type dd --ufw allow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("-n", "--non-interactive", action="store_true", help="no prompts: flags, MTPROXY_* variables, defaults")
    a("--root", help="installation root (default $MTPROXY_ROOT or /opt/vless)")
    a("--port", type=int, help=f"public port (MTPROXY_PORT, default {DEFAULT_PORT})")
    a("--workers", type=int, help=f"worker processes (MTPROXY_WORKERS, default {DEFAULT_WORKERS})")
    a("--type", dest="secret_type", help="secret type: ee (fake-TLS, recommended), dd or plain")
    a("--domain", help="fake-TLS domain, e.g. www.example.com (MTPROXY_DOMAIN)")
    a("--server", help="server address or domain name for links (MTPROXY_SERVER)")
    a("--ufw", choices=UFW_MODES, help="UFW rule: limit (default), allow or skip (MTPROXY_UFW)")
    a("--manager", choices=MANAGERS, help="docker (default), systemd, or none (files only)")
    a("--image", default=None, help=f"image to run (default {docker.DEFAULT_IMAGE})")
    a("--build-script", help="a checkout's deploy/docker/build-image.sh to build a missing image with "
                             "(default: the build step shipped in this package, from the installed package)")
    a("--local-base", action="store_true", help="build the image on a debootstrapped local base")
    a("--behind-haproxy", action=argparse.BooleanOptionalAction, default=None,
      help="serve fake-TLS clients through the VPN stack's HAProxy on port 443: it routes the domain's SNI to "
           "the proxy on 127.0.0.1:PORT with a PROXY v2 header (MTPROXY_BEHIND_HAPROXY=1; a re-run keeps it "
           "unless --no-behind-haproxy)")
    a("--haproxy-config", metavar="FILE",
      help="the HAProxy config to edit (default: the one that exists of <root>/config/haproxy.cfg, "
           "<root>/config/haproxy/haproxy.cfg, <root>/haproxy/haproxy.cfg, <root>/haproxy.cfg, "
           "/etc/haproxy/haproxy.cfg)")
    a("--haproxy-port", type=int, default=None, metavar="PORT",
      help="the HAProxy frontend's port (default: the recorded one, else 443)")
    a("--haproxy-check", metavar="COMMAND",
      help="command that checks a config file, {file} standing for it (default: the recorded one, else "
           "haproxy -c -f {file})")
    a("--haproxy-reload", metavar="COMMAND",
      help="command that reloads HAProxy, e.g. 'docker kill -s HUP vless_haproxy' (default: the recorded one, "
           "else systemctl reload haproxy when that service runs)")
    a("--mask", metavar="HOST:PORT",
      help="where connections that fail the handshake go (default behind HAProxy: the stack's own site for "
           "the domain when its HAProxy config shows one, else DOMAIN:443)")
    a("--dry-run", action="store_true", help="check and show the plan; change nothing")
    return p


class Asker:
    """Prompts on a terminal (stdin/stdout), re-asking until the answer validates."""

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self.stdin = stdin
        self.stdout = stdout

    def ask(self, question: str, default: str, check: Callable[[str], object]) -> str:
        for _ in range(10):
            self.stdout.write(f"{question} [{default}]: ")
            self.stdout.flush()
            line = self.stdin.readline()
            if not line:
                raise InstallError("no answer (end of input)", "run with --non-interactive and flags")
            answer = line.strip() or default
            try:
                check(answer)
                return answer
            except ValueError as exc:
                self.stdout.write(f"  {exc}\n")
        raise InstallError("too many invalid answers", "run it again")


def _check_yes(text: str) -> str:
    if text.lower() not in ("y", "yes", "n", "no"):
        raise ValueError("answer y or n")
    return text


def _number(flag: int | None, env: Mapping[str, str], option: str, name: str,
            check: Callable[[str | int], object]) -> int | None:
    """The flag, else the variable; None when neither is given. 0 or out of range is refused here, before
    any question: 0 never means "the default" (leaving it out does)."""
    source = option if flag is not None else name
    value = flag if flag is not None else env.get(name, "").strip()
    if value == "":
        return None
    try:
        number = whole_number(value, source)
    except Invalid as exc:
        raise InstallError(exc.what, exc.todo) from None
    try:
        check(number)
    except Invalid as exc:
        raise InstallError(f"{source}: {exc.what}", exc.todo) from None
    return number


@dataclass(frozen=True)
class _Choice:
    """The install's values: first what flags, MTPROXY_* variables, the settings and the record say, then
    (checked, or answered) what is installed."""

    port: int | None
    workers: int | None
    kind: str
    domain: str | None
    server: str | None
    ufw_mode: str
    behind_haproxy: bool = False


def _given(ns: argparse.Namespace, env: Mapping[str, str], settings: Settings,
           record: InstallRecord | None) -> _Choice:
    """Flags win over variables, variables over the settings file and the install record."""
    domain = ns.domain or env.get("MTPROXY_DOMAIN") or settings.domain
    padded = _truthy(env.get("MTPROXY_PADDING", "1"))
    return _Choice(
        port=_number(ns.port, env, "--port", "MTPROXY_PORT", port_number),
        workers=_number(ns.workers, env, "--workers", "MTPROXY_WORKERS", check_workers),
        kind=ns.secret_type or ("ee" if domain else "dd" if padded else "plain"),
        domain=domain,
        server=ns.server or env.get("MTPROXY_SERVER") or settings.server,
        ufw_mode=ns.ufw or env.get("MTPROXY_UFW") or (record.ufw_mode if record else "limit"),
        # A re-run keeps the HAProxy integration an earlier run made.
        behind_haproxy=_behind_haproxy(ns, env, record),
    )


def _behind_haproxy(ns: argparse.Namespace, env: Mapping[str, str], record: InstallRecord | None) -> bool:
    """--behind-haproxy / --no-behind-haproxy, else MTPROXY_BEHIND_HAPROXY, else what an earlier run did."""
    if ns.behind_haproxy is not None:
        return bool(ns.behind_haproxy)
    if env.get("MTPROXY_BEHIND_HAPROXY", "").strip():
        return _truthy(env["MTPROXY_BEHIND_HAPROXY"])
    return record is not None and record.haproxy is not None


@dataclass(frozen=True)
class _Checks:
    """The shared checks of validation.py as setup applies them; warnings go to `say`."""

    say: TextIO
    root: Path
    settings: Settings
    own_port: int | None  # the port our installed proxy holds: not "in use" for a re-run
    runner: Runner
    haproxy_config: Path | None = None  # the stack's HAProxy config (given, or the one found): asked about

    def port(self, text: str) -> int:
        checked = check_port(text, self.root, self.settings.stats_port,
                             lambda p: port_problem(p, self.own_port, self.runner))
        _warn(self.say, checked)
        return checked.value

    def workers(self, text: str | int) -> int:
        checked = check_workers(text)
        _warn(self.say, checked)
        return checked.value

    def server(self, text: str) -> str | None:
        if text == "auto":
            return None
        checked = check_server(text)
        _warn(self.say, checked)
        return checked.value


def _ask(asker: Asker, given: _Choice, default_port: int, checks: _Checks) -> _Choice | None:
    """The questions, each re-asked until its answer passes the same check as the flag; None: declined."""
    settings = checks.settings
    if asker.ask("Install the MTProxy add-on now? (y/n)", "y", _check_yes).lower().startswith("n"):
        return None
    if given.port is None and port_problem(default_port, checks.own_port, checks.runner):
        from ..host.ports import suggest_free

        default_port = suggest_free({default_port, settings.stats_port}) or default_port
        asker.stdout.write(f"  port {settings.port} is taken here; proposing {default_port}\n")
    port = port_number(asker.ask("Public port", str(given.port or default_port), checks.port))
    workers = whole_number(asker.ask("Worker processes", str(given.workers or settings.workers), checks.workers),
                           "workers")
    kind = check_secret_type(asker.ask("Secret type: ee = fake-TLS (recommended), dd, plain", given.kind,
                                       check_secret_type))
    domain = given.domain
    if kind == "ee":
        domain = check_domain(asker.ask("Fake-TLS domain (a real HTTPS site)", domain or "www.google.com",
                                        check_domain))
    behind = False
    if kind == "ee" and checks.haproxy_config is not None:
        asker.stdout.write(f"HAProxy config found: {checks.haproxy_config}\n")
        behind = asker.ask(f"Serve {domain} through HAProxy on its port 443 (SNI routing; the proxy then listens "
                           f"on 127.0.0.1:{port})? (y/n)", "y" if given.behind_haproxy else "n",
                           _check_yes).lower().startswith("y")
    server = checks.server(asker.ask("Server address or domain for links", given.server or "auto",
                                     lambda t: t == "auto" or check_server(t)))
    if behind:
        return _Choice(port, workers, kind, domain, server, "skip", True)
    asker.stdout.write(UFW_EXPLAIN + "\n")
    ufw_mode = check_ufw_mode(asker.ask("UFW rule: limit, allow or skip", given.ufw_mode, check_ufw_mode))
    return _Choice(port, workers, kind, domain, server, ufw_mode)


def _decide(ns: argparse.Namespace, env: Mapping[str, str], given: _Choice, default_port: int,
            checks: _Checks) -> _Choice:
    """Without questions: every value checked as its flag would be; the first refusal stops setup."""
    try:
        port = checks.port(str(default_port if given.port is None else given.port))
        workers = checks.workers(checks.settings.workers if given.workers is None else given.workers)
        kind, domain = check_secret_type(given.kind), given.domain
        if kind == "ee":
            if not domain:
                raise InstallError("fake-TLS (ee) needs a domain", "pass --domain or MTPROXY_DOMAIN")
            domain = check_domain(domain)
        server = checks.server(given.server) if given.server else None
        source = "--ufw" if ns.ufw else "MTPROXY_UFW" if env.get("MTPROXY_UFW") else "the recorded UFW mode"
        ufw_mode = check_ufw_mode(given.ufw_mode, source)
    except Invalid as exc:
        raise InstallError(exc.what, exc.todo) from None
    if given.behind_haproxy:
        if kind != "ee":
            raise InstallError("--behind-haproxy needs a fake-TLS (ee) secret: HAProxy routes by its domain's SNI",
                               "pass --type ee --domain DOMAIN")
        ufw_mode = "skip"  # the loopback port needs no rule; HAProxy's port is the stack's
    return _Choice(port, workers, kind, domain, server, ufw_mode, given.behind_haproxy)


def gather(ns: argparse.Namespace, env: Mapping[str, str], asker: Asker | None, runner: Runner,
           paths: Paths, layout: HostLayout, out: TextIO | None = None) -> InstallPlan | None:
    """Turn flags, variables and answers into a plan. None: the operator declined. Warnings about the
    values go to `out` (the asker's terminal when there is one)."""
    settings = read_settings(paths.settings_file)
    record = InstallRecord.load(layout.install_record)
    say = asker.stdout if asker is not None else out or sys.stdout
    explicit = Path(ns.haproxy_config) if ns.haproxy_config else None
    recorded = Path(record.haproxy.config) if record is not None and record.haproxy is not None else None
    found = explicit or recorded or haproxy.stack_config(paths.root, layout.etc)
    checks = _Checks(say, paths.root, settings, record.port if record else None, runner, found)
    given = _given(ns, env, settings, record)
    default_port = given.port or (record.port if record else settings.port)
    chosen = (_ask(asker, given, default_port, checks) if asker is not None
              else _decide(ns, env, given, default_port, checks))
    if chosen is None:
        return None
    assert chosen.port is not None and chosen.workers is not None  # both checked above
    manager, _ = choose_manager(ns.manager, runner, _image(ns, record), _local_base(ns, env))
    behind = None
    if chosen.behind_haproxy:
        # A re-run without the flags takes the port and commands the earlier run recorded.
        earlier = record.haproxy if record is not None else None
        try:
            behind = haproxy.plan(
                runner, explicit or recorded, paths.root, layout.etc,
                ns.haproxy_port or (earlier.public_port if earlier else 443),
                ns.haproxy_check or (shlex.join(earlier.check) if earlier else None),
                ns.haproxy_reload or (shlex.join(earlier.reload) if earlier else None))
        except haproxy.HaproxyError as exc:
            raise InstallError(exc.what, exc.todo) from None
        say.write(f"HAProxy: {behind.config} ({behind.why}); check: {shlex.join(behind.control.check)}; "
                  f"reload: {shlex.join(behind.control.reload)}\n")
    mask = _mask(ns.mask, settings, behind, chosen, paths.root, say)
    return InstallPlan(
        root=paths.root, port=chosen.port, workers=chosen.workers, secret_type=chosen.kind,
        domain=chosen.domain if chosen.kind == "ee" else None, server=chosen.server, ufw_mode=chosen.ufw_mode,
        manager=manager, image=_image(ns, record), build_script=Path(ns.build_script) if ns.build_script else None,
        local_base=_local_base(ns, env), stats_port=settings.stats_port, haproxy=behind, mask=mask,
    )


def _mask(given: str | None, settings: Settings, behind: haproxy.Integration | None, chosen: _Choice,
          root: Path, say: TextIO) -> str | None:
    """The mask to write: --mask; else, behind HAProxy and with none in the settings, the stack's own site
    for the domain as its HAProxy config routes it (read, never contacted). None: leave the settings' mask."""
    if given is not None:
        try:
            mask = check_mask(given.strip())
        except ValueError as exc:
            raise InstallError(f"--mask: {exc}", "give HOST:PORT, e.g. 127.0.0.1:8443") from None
        say.write(f"Mask: {mask} (given with --mask)\n")
        return mask
    if behind is None or chosen.domain is None:
        return None
    if settings.mask is not None:
        say.write(f"Mask: {settings.mask} (kept from the settings file; --mask HOST:PORT changes it)\n")
        return None
    from ..host.ports import vpn_ports

    found = haproxy.stack_mask(haproxy.read_config(behind.config), behind.public_port, chosen.domain,
                               vpn_ports(root), chosen.port or 0)
    if found.target is not None:
        say.write(f"Mask: {found.target}, the stack's own site ({found.why}); --mask HOST:PORT overrides it\n")
    else:
        say.write(f"Mask: {chosen.domain}:443, the engine's default ({found.why}); --mask HOST:PORT "
                  "overrides it\n")
    return found.target


def _warn(out: TextIO, checked: Checked[object]) -> None:
    for warning in checked.warnings:
        out.write(f"warning: {warning}\n")


def _image(ns: argparse.Namespace, record: InstallRecord | None) -> str:
    return str(ns.image or (record.image if record else docker.DEFAULT_IMAGE))


def _local_base(ns: argparse.Namespace, env: Mapping[str, str]) -> bool:
    return bool(ns.local_base) or _truthy(env.get("MTPROXY_LOCAL_BASE"))


def check_host(ns: argparse.Namespace, env: Mapping[str, str], runner: Runner, layout: HostLayout,
               out: TextIO) -> None:
    """Root, Docker (or systemd) and the image, before the first question: an operator never answers every
    question only to learn the host cannot take the install. Fixes ns.manager (the default may fall back
    to systemd, and says so)."""
    record = InstallRecord.load(layout.install_record)
    ns.manager, note = choose_manager(ns.manager, runner, _image(ns, record), _local_base(ns, env))
    if note:
        out.write(f"note: {note}\n")
    build_script = Path(ns.build_script) if ns.build_script else None
    image_note = host_checks(ns.manager, _image(ns, record), build_script, _local_base(ns, env), runner)
    if image_note:
        out.write(f"note: {image_note}\n")


def host_extras(layout: HostLayout) -> dict[Path, tuple[str, int]]:
    """What fits mtproxy into the host's tools: shell completions (secret ids and labels complete from the
    store), the man page generated from the CLI, and the drop-in for the host's status command."""
    from .completion import SHELLS, source
    from .main import cli
    from .manpage import render

    extras = {layout.completions[shell]: (source(cli, shell) + "\n", 0o644) for shell in SHELLS}
    extras[layout.man_page] = (render(cli), 0o644)
    extras[layout.status_hook] = (templates.status_hook(installed_program("mtproxy"), layout.root), 0o755)
    return extras


def _free_label(data: StoreData) -> str:
    """"default", or "default-2", "default-3" … when a re-run with another type already used it."""
    taken = {rec.label for rec in data.secrets}
    label, n = "default", 1
    while label in taken:
        n += 1
        label = f"default-{n}"
    return label


def _ensure_secret(plan: InstallPlan, paths: Paths, random16: Callable[[], bytes]) -> SecretRecord:
    """The first secret, unless an active one of the chosen type exists (a re-run keeps it)."""

    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        for rec in data.active_records():
            if rec.type == plan.secret_type and (rec.domain or None) == plan.domain:
                return data, rec
        secret = generate_secret(random16(), TYPES[plan.secret_type], plan.domain)
        rec = SecretRecord.from_secret(os.urandom(4).hex(), secret, label=_free_label(data), created_at=now_iso(),
                                       created_by="mtproxy-setup")
        return data.with_record(rec), rec

    return update_store(paths.secrets_file, change)


def apply(plan: InstallPlan, runner: Runner, paths: Paths, layout: HostLayout, out: TextIO,
          random16: Callable[[], bytes] = lambda: os.urandom(16)) -> None:
    """Install the plan step by step; on failure undo this run's changes and raise InstallError."""
    warnings = preflight(plan, runner, layout)
    for warning in warnings:
        out.write(f"warning: {warning}\n")
    if runner.dry_run:
        if plan.manager == "systemd" and systemd.user_ids(runner) is None:
            out.write(f"dry run: would add the system user {systemd.USER} ({' '.join(systemd.USERADD)})\n")
        if plan.haproxy is not None:
            out.write(f"dry run: would route the fake-TLS domain on HAProxy's port {plan.public_port} to "
                      f"127.0.0.1:{plan.port} in {plan.haproxy.config}\n")
        out.write(f"dry run: would install {plan.manager} on port {plan.port} (ufw {plan.ufw_mode}); "
                  "checks passed, nothing changed\n")
        return
    txn = Transaction()
    previous = ownership(paths, layout).record  # only this root's record says which user setup added
    moving = previous is not None and previous.haproxy is not None and (
        plan.haproxy is None or str(plan.haproxy.config) != previous.haproxy.config)
    steps = {"docker": 11, "systemd": 10, "none": 7}[plan.manager] + (plan.haproxy is not None) + moving
    progress = Progress(out, steps)
    try:
        if plan.manager == "systemd":
            progress.start(f"System user {systemd.USER}")
        owner = service_owner(plan, runner, txn)
        if plan.manager == "systemd":
            progress.finish("added" if owner.user_created else "present")

        progress.start(f"Directories under {paths.root}")
        make_dirs(paths, layout, txn, owner)
        progress.finish()

        progress.start("Settings (port, workers, domain, server)")
        txn.add("the settings file", snapshot(paths.settings_file))
        update_settings(paths.settings_file, port=plan.public_port, workers=plan.workers, domain=plan.domain,
                        server=plan.server, proxy_protocol=plan.haproxy is not None,
                        extra=_listen_extra(read_settings(paths.settings_file), plan, previous),
                        **({"mask": plan.mask} if plan.mask is not None else {}))
        progress.finish()

        progress.start("Secret")
        txn.add("the secrets store", snapshot(paths.secrets_file))
        record = _ensure_secret(plan, paths, random16)
        give_to(owner, (paths.secrets_file, paths.settings_file), 0o600)
        progress.finish(f"{record.type} {record.masked()}")

        progress.start("Links and QR codes")
        from ..operations.artifacts import choose_server, write_all

        settings = read_settings(paths.settings_file)
        data = update_store(paths.secrets_file, lambda d: (d, d))
        server = choose_server(settings, None)
        notes = write_all(paths, data, settings, server)
        progress.finish("; ".join(notes) or "ok")

        files, ufw_added = install_services(plan, runner, layout, txn, progress, owner)
        haproxy_record = route_through_haproxy(plan, runner, txn, progress, routed_domains(data), previous,
                                               settings.secret_domain_base)

        progress.start("Shell completions, man page, status hook")
        for path, (text, mode) in host_extras(layout).items():
            txn.add(str(path), snapshot(path))
            write_file(path, text, mode)
            files.append(str(path))
        progress.finish()
        # A re-run finds the user it added last time already there: it stays setup's to delete.
        user_created = owner.user_created or (previous is not None and previous.user_created)
        InstallRecord.new(paths, plan.port, plan.manager, plan.ufw_mode, plan.image, files,
                          ufw_added, user_created, plan.stats_port, haproxy_record).save(layout.install_record)
    except (InstallError, haproxy.HaproxyError, CommandError, OSError, ValueError, StoreError) as exc:
        out.write("failed\n")
        what, todo = ((exc.what, exc.todo) if isinstance(exc, (InstallError, haproxy.HaproxyError))
                      else (str(exc), ""))
        out.write(f"{what}\nUndoing what this run changed:\n")
        txn.rollback(out)
        raise InstallError(what, todo or "fix it and run setup again: what this run changed was undone") from None
    _print_result(plan, paths, record, server, out)


def _listen_extra(settings: Settings, plan: InstallPlan, previous: InstallRecord | None) -> dict[str, object]:
    """The engine's keys of the settings file with `listen` set behind HAProxy (the loopback port; `port` is
    then HAProxy's, for links), and taken away again when an earlier run behind HAProxy set it."""
    extra = dict(settings.extra)
    if plan.haproxy is not None:
        extra["listen"] = [f"127.0.0.1:{plan.port}"]
    elif previous is not None and previous.haproxy is not None:
        extra.pop("listen", None)
    return extra


def _print_result(plan: InstallPlan, paths: Paths, record: SecretRecord, server: ServerChoice | None,
                  out: TextIO) -> None:
    from ..links import make_links
    from ..qr import terminal_text

    out.write("\nmtproxy is installed.\n")
    if server is not None:
        links = make_links(server.address, plan.public_port, record.secret())
        out.write(f"  link:  {links.tg}\n  web:   {links.https}\n")
        out.write(terminal_text(links.tg) + "\n")
    out.write(f"  files: {paths.default_link_file}, {paths.default_qr_png}\n")
    out.write("  manage it with `mtproxy status`, `mtproxy add-secret`, `mtproxy show-config`\n")


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None,
         stdin: TextIO | None = None, stdout: TextIO | None = None, runner: Runner | None = None,
         stderr: TextIO | None = None) -> int:
    """`mtproxy-setup`: the wizard run through the CLI's one error edge (one line on stderr, an ExitStatus)."""
    return run_host_command(install, "mtproxy-setup", argv, env, stdin, stdout, runner, stderr)


def install(argv: list[str], environ: Mapping[str, str], stdin: TextIO, stdout: TextIO,
            runner: Runner | None) -> ExitStatus:
    """Check the host, gather the plan, apply it; raises what the edge reports."""
    ns = build_parser().parse_args(argv)
    runner = runner or Runner(dry_run=ns.dry_run)
    paths = Paths.resolve(ns.root, environ)
    layout = HostLayout.resolve(paths.root, environ)
    interactive = not ns.non_interactive and not _truthy(environ.get("MTPROXY_NON_INTERACTIVE"))
    if interactive and not (stdin.isatty() and stdout.isatty()):
        raise CliError("no terminal to ask questions on",
                       "run with --non-interactive (and flags or MTPROXY_* variables)", ExitStatus.CONFLICT)
    try:
        check_host(ns, environ, runner, layout, stdout)
        plan = gather(ns, environ, Asker(stdin, stdout) if interactive else None, runner, paths, layout, stdout)
        if plan is None:
            stdout.write("Nothing installed.\n")
            return ExitStatus.OK
        apply(plan, runner, paths, layout, stdout)
        return ExitStatus.OK
    except KeyboardInterrupt:
        stdout.write("\n")
        raise CliError("interrupted: nothing more was changed", "", ExitStatus.INTERRUPTED) from None
