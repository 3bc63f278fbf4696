"""`mtproxy doctor`: what is wrong with this root's installation, and how to fix each thing.

Gathers facts (status's checks from operations/health.py, host/netprobe.py for the network and /proc) and
hands them to operations/doctor_rules.py for judgment. Offline, nothing is contacted, not even loopback: no
socket is opened at all (tests/cli/test_doctor.py proves it with an audit hook).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from .. import dc_addresses
from ..config import ConfigError, EngineConfig, HostPort, TlsOptions, Upstream, resolve
from ..host import docker, fail2ban, netprobe, ports
from ..host.layout import HostLayout
from ..host.runner import Runner
from ..host.service import main_pid
from ..links import ServerUnknownError, guess_public_address
from ..paths import Paths
from ..protocol.errors import ProxyConfigError
from ..protocol.flight import MIN_FLIGHT
from ..protocol.proxyconfig import parse_proxy_config, parse_proxy_secret
from ..protocol.secret import SecretKind
from ..store import StoreError, read_store
from . import doctor_rules as rules
from .doctor_rules import Finding, Severity
from .health import Health, collect, port_accepts

DEFAULT_TIMEOUT = 3.0
T = TypeVar("T")
R = TypeVar("R")
GROUPS = ("installation", "port", "clock", "dns", "mask", "telegram")


@dataclass
class Probes:
    """How doctor reaches the world; tests pass their own resolver and clock."""

    clock: Callable[[], datetime]
    resolve: netprobe.Resolver | None = None  # None: the host's resolver with `timeout`
    dial: netprobe.Dialer = netprobe.direct_dial  # the DCs' dialer; through the settings' upstream when set
    via: str = "directly"  # how `dial` reaches the DCs, for the messages
    timeout: float = DEFAULT_TIMEOUT  # every network call's
    offline: bool = False
    proc: Path = field(default=Path("/proc"))

    @property
    def resolver(self) -> netprobe.Resolver:
        return self.resolve or netprobe.system_resolver(self.timeout)


@dataclass(frozen=True)
class Diagnosis:
    findings: list[Finding]

    @property
    def exit_status(self) -> int:
        return rules.exit_status(self.findings)

    def counts(self) -> dict[str, int]:
        return {s.word: sum(1 for f in self.findings if f.severity is s) for s in Severity}


def diagnose(paths: Paths, runner: Runner, server_override: str | None, probes: Probes) -> Diagnosis:
    online = not probes.offline
    health = collect(paths, runner, local_probes=online, predict_uid=True)
    findings = [rules.from_check(c.name, c.ok, c.detail, c.fix) for c in health.checks if c.name != "port"]
    findings += _host_tools(runner, health)
    config, problem = _engine_config(paths)
    if problem and health.settings is not None:  # an unreadable file is status's finding already
        findings.append(Finding("installation", "engine settings", Severity.ERROR, problem,
                                "fix the settings file by hand (docs/engine.md lists its keys)"))
    findings.append(_port(health, runner, probes))
    domains = _domains(paths, config)
    mask = _mask(config, domains)
    if not online:
        findings += [rules.skipped("clock", "clock"), rules.skipped("dns", "DNS"),
                     rules.skipped("mask", "mask"), rules.skipped("telegram", "DCs")]
        return Diagnosis(findings)
    tls = config.tls if config is not None else TlsOptions()
    findings += _mask_and_clock(mask, domains, tls, probes)
    findings += _dns(domains, mask, health, server_override, probes)
    upstream = config.upstream if config is not None else None
    if upstream is not None and probes.dial is netprobe.direct_dial:
        finding, probes = _upstream(upstream, probes)
        findings.append(finding)
    findings.append(_dcs(config, probes, upstream is not None))
    if config is not None and config.runs_middle_proxy(_any_ad_tag(paths)):
        findings += _middle_proxy(config, probes)
    return Diagnosis(findings)


def _any_ad_tag(paths: Paths) -> bool:
    try:
        return any(record.ad_tag and record.active for record in read_store(paths.secrets_file).secrets)
    except StoreError:
        return False  # the store's own finding says why


def _middle_proxy(config: EngineConfig, probes: Probes) -> list[Finding]:
    """The relay path as the engine runs it: its two documents (the operator's file, else the engine's cached
    copy, else fetched now as the engine would), then a real handshake with every relay they name."""
    origins: dict[str, str] = {}
    texts: dict[str, bytes] = {}
    for name, given, path in (("proxy-secret", config.aes_pwd, "getProxySecret"),
                              ("proxy-multi.conf", config.proxy_multi_conf, "getProxyConfig")):
        cached = config.relay_cache_dir / name
        url = f"{config.relay_config_url}/{path}"
        try:
            if given is not None:
                texts[name], origins[name] = given.read_bytes(), f"your file {given}"
            elif cached.is_file():
                texts[name], origins[name] = cached.read_bytes(), f"the engine's cached copy {cached}"
            else:
                texts[name], origins[name] = netprobe.fetch_document(url, probes.timeout), f"fetched from {url}"
        except OSError as exc:
            problem = f"{given}: {netprobe.reason(exc)}" if given is not None else \
                f"no cached {name} and {url} cannot be fetched ({netprobe.reason(exc)})"
            return [rules.judge_relay_documents(origins, problem, config.relay_config_url)]
    try:
        secret = parse_proxy_secret(texts["proxy-secret"])
        relays = parse_proxy_config(texts["proxy-multi.conf"]).relays
    except ProxyConfigError as exc:
        return [rules.judge_relay_documents(origins, f"unusable relay configuration: {exc}",
                                            config.relay_config_url)]
    targets = {f"DC {dc} {relay}": relay for dc, found in sorted(relays.items()) for relay in found}
    answers = _in_parallel(targets, lambda relay: netprobe.relay_check(relay, secret, config.nat_rules,
                                                                       probes.timeout), probes.timeout)
    final = {label: answer.error if answer is not None else "no answer in time" for label, answer in answers.items()}
    warnings = [answer.nat_warning for answer in answers.values() if answer is not None and answer.nat_warning]
    return [rules.judge_relay_documents(origins, "", config.relay_config_url),
            rules.judge_relays(final, warnings[0] if warnings else None)]


def _upstream(upstream: Upstream, probes: Probes) -> tuple[Finding, Probes]:
    """The SOCKS5 upstream's own health, and the probes that dial the DCs through it as the engine does."""
    via = f"through the SOCKS5 upstream {upstream}"
    addresses, error = _address_of(upstream.host, probes)
    if not addresses:
        why = error or "its name has no address"

        def unresolved(host: str, port: int, timeout: float) -> socket.socket:
            raise OSError(f"the upstream {upstream.host} does not resolve")

        return rules.judge_upstream(str(upstream), why), replace(probes, dial=unresolved, via=via)
    address = (addresses[0], upstream.port)
    finding = rules.judge_upstream(str(upstream), netprobe.socks5_check(address, upstream.credentials, probes.timeout))
    return finding, replace(probes, dial=netprobe.socks5_dialer(address, upstream.credentials), via=via)


def _engine_config(paths: Paths) -> tuple[EngineConfig | None, str]:
    """The settings as the installed engine resolves them (`mtproxy run --root ROOT`)."""
    try:
        return resolve(["--root", str(paths.root)]), ""
    except ConfigError as exc:
        return None, str(exc)
    except SystemExit:
        return None, "the settings file holds an option the engine refuses"


def _domains(paths: Paths, config: EngineConfig | None) -> list[str]:
    """The fake-TLS domains clients put in their SNI: the settings' and every active ee secret's."""
    found = list(config.domains) if config is not None else []
    with contextlib.suppress(StoreError, OSError):
        for record in read_store(paths.secrets_file).active_records():
            secret = record.secret()
            if secret.kind is SecretKind.FAKE_TLS and secret.domain and secret.domain not in found:
                found.append(secret.domain)
    return found


def _mask(config: EngineConfig | None, domains: list[str]) -> HostPort | None:
    """Where the engine hands failed handshakes, as runtime/server.py's Server.mask picks it: the
    configured mask, else (unless --no-mask) the first fake-TLS domain on 443."""
    if config is not None and (config.mask is not None or config.mask_disabled):
        return config.mask
    return HostPort(sorted(domains)[0], 443) if domains else None


def _host_tools(runner: Runner, health: Health) -> list[Finding]:
    """The fail2ban jail and the Docker engine of an installation (status covers the service and UFW)."""
    record = health.own.record
    if record is None:
        return []
    found: list[Finding] = []
    layout = HostLayout.resolve(Path(record.root))
    if str(layout.fail2ban_jail) in record.files:
        if not runner.available("fail2ban-client"):
            found.append(Finding("installation", "fail2ban", Severity.WARNING,
                                 "the mtproxy jail is installed but fail2ban is not",
                                 "apt-get install fail2ban"))
        elif not fail2ban.running(runner):
            found.append(Finding("installation", "fail2ban", Severity.WARNING,
                                 "fail2ban is installed but not running: probing addresses are not banned",
                                 "systemctl enable --now fail2ban"))
        elif not runner.run(["fail2ban-client", "status", fail2ban.JAIL], check=False, mutates=False,
                            timeout=15).ok:
            found.append(Finding("installation", "fail2ban", Severity.WARNING,
                                 f"fail2ban runs without the {fail2ban.JAIL} jail",
                                 f"fail2ban-client reload; then fail2ban-client status {fail2ban.JAIL}"))
        else:
            found.append(Finding("installation", "fail2ban", Severity.OK, f"jail {fail2ban.JAIL} active"))
    if record.manager == "docker":
        problem = docker.engine_problem(runner)
        found.append(Finding("installation", "docker", Severity.ERROR, problem,
                             "systemctl start docker (install Docker if it is missing)") if problem else
                     Finding("installation", "docker", Severity.OK, "the Docker engine answers"))
    return found


def _port(health: Health, runner: Runner, probes: Probes) -> Finding:
    # the port the engine binds (behind HAProxy the loopback one), not the port in links
    host, port = health.effective.bound[0]
    listeners = netprobe.listening(port, probes.proc)
    pid = main_pid(runner, health.service)
    own = {pid} if pid is not None else set()
    accepts = free = None
    if not probes.offline:
        accepts = port_accepts(port, timeout=probes.timeout, host=host) if listeners else None
        taken = any(not rules.is_ours(x, own) for x in listeners if x.pid is not None) or not listeners
        free = ports.suggest_free({port}) if taken else None
    return rules.judge_port(port, listeners, own, accepts, free)


def _address_of(host: str, probes: Probes) -> tuple[list[str] | None, str]:
    """The host's addresses (an address is its own), or None and why it could not be resolved."""
    if _is_address(host):
        return [str(ipaddress.ip_address(host))], ""
    try:
        return probes.resolver(host), ""
    except OSError as exc:
        return None, netprobe.reason(exc)


def _mask_and_clock(mask: HostPort | None, domains: list[str], tls: TlsOptions, probes: Probes) -> list[Finding]:
    """One HTTPS request to the mask site answers both: its certificate flight, and its clock. Without a
    mask (--no-mask) the first fake-TLS domain's site still tells the time."""
    if mask is None:
        mask_finding = Finding("mask", "mask", Severity.SKIPPED, "no mask site (the engine closes failed "
                                                                 "handshakes)")
        if not domains:
            return [Finding("clock", "clock", Severity.SKIPPED, "no mask or fake-TLS domain to ask the time"),
                    mask_finding]
        answer, error = _ask(HostPort(sorted(domains)[0], 443), domains, probes)
        return [_clock(answer, error, HostPort(sorted(domains)[0], 443), tls), mask_finding]
    where = f"{mask.host}:{mask.port}"
    answer, error = _ask(mask, domains, probes)
    if answer is None:
        return [_clock(None, error, mask, tls), rules.judge_mask_reach(where, error)]
    flight = rules.judge_mask_flight(where, answer.tls_version, answer.flight, tls.cert_size, tls.cert_jitter,
                                     MIN_FLIGHT)
    return [_clock(answer, "", mask, tls), flight]


def _ask(site: HostPort, domains: list[str], probes: Probes) -> tuple[netprobe.SiteAnswer | None, str]:
    """`HEAD /` over TLS to the site, named as clients name it (an address gets the first domain as SNI)."""
    addresses, error = _address_of(site.host, probes)
    if not addresses:
        return None, error or "its name does not resolve"
    sni = site.host if not _is_address(site.host) else (sorted(domains)[0] if domains else site.host)
    try:
        return netprobe.ask_site(addresses[0], site.port, sni, probes.timeout, probes.clock), ""
    except (OSError, ValueError) as exc:
        return None, netprobe.reason(exc)


def _clock(answer: netprobe.SiteAnswer | None, error: str, site: HostPort, tls: TlsOptions) -> Finding:
    where = f"{site.host}:{site.port}"
    if answer is None:
        return Finding("clock", "clock", Severity.SKIPPED, f"not checked: {where} cannot be reached ({error})")
    if answer.date is None:
        return Finding("clock", "clock", Severity.WARNING, f"{where} sent no Date header: the clock is not "
                                                           "checked", "check `timedatectl` by hand")
    return rules.judge_skew(answer.received_at, answer.date, tls.skew, site.host)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _dns(domains: list[str], mask: HostPort | None, health: Health, server_override: str | None,
         probes: Probes) -> list[Finding]:
    found: list[Finding] = []
    own: set[str] = set()
    settings = health.effective
    server = server_override or settings.server
    if server:
        addresses, error = _address_of(server, probes)
        found.append(rules.judge_own_addresses(server, addresses, error))
        own.update(addresses or ())
    with contextlib.suppress(ServerUnknownError):
        own.add(guess_public_address().address)  # the default route's source: no packet is sent
    if not domains:
        found.append(Finding("dns", "domain", Severity.OK, "no fake-TLS domain configured (no ee secret)"))
    where = f"{mask.host}:{mask.port}" if mask is not None else "none"
    for domain in domains:
        addresses, error = _address_of(domain, probes)
        masked_here = mask is not None and mask.host == domain
        found.append(rules.judge_domain(domain, addresses, error, own, masked_here, where))
    return found


def _dcs(config: EngineConfig | None, probes: Probes, upstream: bool) -> Finding:
    """A TCP connect to every DC the engine would dial for a client (its overrides, else Telegram's table)."""
    targets: dict[str, HostPort] = {}
    overrides = config.dc_overrides if config is not None else {}
    prefer_ipv6 = config.prefer_ipv6 if config is not None else False
    if overrides:
        for dc, target in overrides.items():
            targets[f"DC {'*' if dc is None else dc} {target.host}:{target.port}"] = target
    else:
        table = dc_addresses.IPV6 if prefer_ipv6 else dc_addresses.IPV4
        for dc, address in sorted(table.items()):
            if dc != dc_addresses.CDN_DC:
                targets[f"DC {dc} {address}"] = HostPort(address, dc_addresses.DC_PORT)
    results = _in_parallel(targets, lambda target: [netprobe.dial_check(probes.dial, target.host, target.port,
                                                                         probes.timeout)], probes.timeout)
    # a dial that outlived its own timeout (a stuck resolver in an upstream dialer) failed
    final = {label: outcome[0] if outcome is not None else "no answer in time" for label, outcome in results.items()}
    return rules.judge_dcs(final, probes.via, upstream)


def _in_parallel(targets: dict[str, T], check: Callable[[T], R], timeout: float) -> dict[str, R | None]:
    """`check` on every target at once, each in a thread; a check still running a second after `timeout`
    (its own bound) is given up on: None. By label, in sorted order."""
    results: dict[str, R] = {}
    lock = threading.Lock()

    def run(label: str, target: T) -> None:
        outcome = check(target)
        with lock:
            results[label] = outcome

    workers = [threading.Thread(target=run, args=item, daemon=True) for item in targets.items()]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout + 1.0)
    with lock:
        return {label: results.get(label) for label in sorted(targets)}
