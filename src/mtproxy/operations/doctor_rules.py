"""doctor's judgments: what a measured fact means for the operator and how to fix it. Pure: no IO, no clock;
operations/doctor.py gathers the facts (host/netprobe.py) and hands them here."""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..host.netprobe import Listener


class Severity(enum.IntEnum):
    """Ordered: the worst finding decides the exit status (skipped counts as ok)."""

    SKIPPED = 0
    OK = 1
    WARNING = 2
    ERROR = 3

    @property
    def word(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Finding:
    group: str  # installation, port, clock, dns, mask, telegram
    name: str
    severity: Severity
    message: str  # one line: what is true
    fix: str = ""  # the command or step that fixes it ("" when nothing is wrong)


EXIT_OK, EXIT_WARNINGS, EXIT_ERRORS = 0, 1, 2
OFFLINE = "skipped (offline)"
# The Date header has one-second resolution and the request takes a moment: allow for both.
DATE_SLACK = 2.0
NTP_FIX = "timedatectl set-ntp true (or install chrony / systemd-timesyncd), then check `timedatectl`"


def exit_status(findings: Iterable[Finding]) -> int:
    """0 when every finding is ok (or skipped), 1 with a warning, 2 with an error."""
    worst = max((f.severity for f in findings), default=Severity.OK)
    return EXIT_ERRORS if worst is Severity.ERROR else EXIT_WARNINGS if worst is Severity.WARNING else EXIT_OK


def skipped(group: str, name: str) -> Finding:
    return Finding(group, name, Severity.SKIPPED, OFFLINE)


def from_check(name: str, ok: bool | None, detail: str, fix: str) -> Finding:
    """A `status` check as a finding: ✓ ok, ✗ error, the informational • a warning worth a look."""
    severity = Severity.OK if ok else Severity.ERROR if ok is False else Severity.WARNING
    return Finding("installation", name, severity, detail, fix if severity is not Severity.OK else "")


# ----------------------------------------------------------------- clock

def judge_skew(local: datetime, remote: datetime, window: float, source: str) -> Finding:
    """Our clock against a web site's Date header. The engine refuses fake-TLS handshakes whose timestamp
    is more than `window` seconds off its own clock, and clients stamp them with theirs (kept right by
    the phone network), so a server clock that far off refuses every client."""
    skew = (local - remote).total_seconds()
    off = abs(skew)
    way = "ahead of" if skew > 0 else "behind"
    said = f"this server's clock is {off:.0f} s {way} {source}'s"
    if off >= window - DATE_SLACK:
        return Finding("clock", "clock", Severity.ERROR,
                       f"{said}: fake-TLS clients are refused beyond ±{window:g} s", NTP_FIX)
    if off > max(window / 2, 10.0):
        return Finding("clock", "clock", Severity.WARNING,
                       f"{said}: close to the ±{window:g} s fake-TLS window", NTP_FIX)
    return Finding("clock", "clock", Severity.OK, f"within {max(off, 1.0):.0f} s of {source} "
                                                  f"(fake-TLS allows ±{window:g} s)")


# ----------------------------------------------------------------- DNS of the fake-TLS domain

def is_public(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_global
    except ValueError:
        return False


def judge_domain(domain: str, addresses: Sequence[str] | None, error: str, own: set[str],
                 masked_here: bool, mask: str) -> Finding:
    """Where the fake-TLS domain resolves, against this server's own addresses.

    The domain is only a disguise: clients reach the proxy by the link's address, and put the domain in
    the TLS SNI. A censor's prober that follows the domain must find a real site there, and connections
    that fail the handshake are handed to the mask (by default that domain on 443). So the domain must not
    resolve to this server, unless this server really serves that site (e.g. HAProxy on 443 with its
    certificate) and the mask is set to that site's backend.
    """
    name = f"domain {domain}"
    real_site = (f"pick a popular real site that is not hosted here (`mtproxy set-domain` or a new ee secret), "
                 f"or, if this server does serve {domain}, point the mask at its backend "
                 "(`mask` in the settings file: HOST:PORT of the web server behind HAProxy)")
    if addresses is None:
        return Finding("dns", name, Severity.WARNING if not masked_here else Severity.ERROR,
                       f"cannot resolve {domain} ({error})" + (
                           f": the mask {mask} cannot be reached by name" if masked_here else ""),
                       "check /etc/resolv.conf and that the name exists; " + real_site)
    if not addresses:
        return Finding("dns", name, Severity.ERROR if masked_here else Severity.WARNING,
                       f"{domain} does not exist in DNS: an SNI for a name nobody serves stands out" + (
                           f", and the mask {mask} cannot be reached" if masked_here else ""), real_site)
    ours = sorted(set(addresses) & own)
    if ours and masked_here:
        return Finding("dns", name, Severity.ERROR,
                       f"{domain} resolves to this server ({', '.join(ours)}): probes handed to the mask "
                       f"{mask} come back here instead of reaching a real site", real_site)
    if ours:
        return Finding("dns", name, Severity.WARNING,
                       f"{domain} resolves to this server ({', '.join(ours)}); right only if this server "
                       f"serves {domain} itself (the mask is {mask})",
                       f"make sure {mask} serves {domain} with its real certificate; otherwise " + real_site)
    return Finding("dns", name, Severity.OK,
                   f"{domain} resolves to {', '.join(addresses[:3])}, not to this server (as it should)")


def judge_own_addresses(server: str, addresses: Sequence[str] | None, error: str) -> Finding:
    """The link's address: what clients dial, and what the fake-TLS domain must not be."""
    if addresses is None or not addresses:
        why = error or "no address"
        return Finding("dns", f"server {server}", Severity.ERROR,
                       f"the links' server {server} does not resolve ({why}): clients cannot connect",
                       "fix its DNS record, or `mtproxy set-server` this server's public IP")
    private = [a for a in addresses if not is_public(a)]
    if private and len(private) == len(addresses):
        shown = server if private == [server] else f"{server} ({', '.join(private)})"
        return Finding("dns", f"server {server}", Severity.WARNING,
                       f"the links' server {shown} is not a public address: clients on the Internet cannot "
                       "reach it", "`mtproxy set-server` this server's public IP or domain")
    shown = server if list(addresses) == [server] else f"{server} ({', '.join(addresses[:3])})"
    return Finding("dns", f"server {server}", Severity.OK, f"links point at {shown}")


# ----------------------------------------------------------------- mask site

def judge_mask_reach(mask: str, error: str) -> Finding:
    return Finding("mask", f"mask {mask}", Severity.ERROR,
                   f"cannot reach the mask {mask} ({error}): failed handshakes and probes get a dead end, "
                   "which gives the proxy away",
                   "check the server's outbound HTTPS (`curl -sI https://HOST`), or choose another real "
                   "site: `mask` in the settings file, or `mtproxy set-domain`")


def judge_mask_flight(mask: str, tls_version: str, flight: int, cert_size: int | None, jitter: int,
                      minimum: int) -> Finding:
    """The mask's real certificate flight against the fake one the engine sends."""
    name = f"mask {mask}"
    if tls_version != "TLSv1.3" or flight < minimum:
        return Finding("mask", name, Severity.WARNING,
                       f"{mask} answers with {tls_version or 'no TLS'}, not TLS 1.3: the engine cannot learn "
                       "its certificate size and imitates a typical one",
                       "choose a mask site that speaks TLS 1.3 (most large sites do)")
    if cert_size is not None and abs(cert_size - flight) > max(jitter, 16) + 64:
        return Finding("mask", name, Severity.WARNING,
                       f"{mask}'s certificate flight is {flight} bytes, but cert_size fixes the fake one at "
                       f"{cert_size}: a prober comparing the two can tell them apart",
                       f"set cert_size to {flight} in the settings file, or remove it to learn the size")
    how = f"cert_size {cert_size} matches" if cert_size is not None else "the engine learns the same"
    return Finding("mask", name, Severity.OK, f"reachable over TLS 1.3, certificate flight {flight} bytes ({how})")


# ----------------------------------------------------------------- Telegram DCs

def judge_dcs(results: Mapping[str, str | None], how: str, upstream: bool = False) -> Finding:
    """`results`: each DC (as "DC 2 149.154.167.51:443") and None when it answered, else why not.
    `upstream`: dialled through the SOCKS5 upstream, whose own finding is judge_upstream's."""
    failed = {dc: why for dc, why in results.items() if why is not None}
    if not results:
        return Finding("telegram", "DCs", Severity.WARNING, "no DC address to try")
    if not failed:
        return Finding("telegram", "DCs", Severity.OK, f"all {len(results)} DCs accept TCP {how}")
    listed = "; ".join(f"{dc}: {why}" for dc, why in list(failed.items())[:3])
    if len(failed) == len(results):
        fix = ("see the upstream's own finding; if it is fine, check where the upstream sends this traffic "
               "(Xray: the routing and outbound of its SOCKS inbound)" if upstream else
               "check the server's outbound traffic to port 443 (firewall, provider); where Telegram "
               "is blocked from the server itself, route the proxy through an upstream (`upstream` setting)")
        return Finding("telegram", "DCs", Severity.ERROR,
                       f"no Telegram DC answers {how} ({listed}): clients connect but get nothing", fix)
    return Finding("telegram", "DCs", Severity.WARNING,
                   f"{len(failed)} of {len(results)} DCs do not answer {how} ({listed})",
                   "usually transient; if it stays, check the server's outbound traffic to those addresses")


def judge_upstream(upstream: str, error: str | None) -> Finding:
    """The SOCKS5 upstream's own health: `error` None when it let us in (greeting, login), else why not."""
    name = f"upstream {upstream}"
    if error is None:
        return Finding("telegram", name, Severity.OK, f"the SOCKS5 upstream {upstream} accepts the proxy")
    if "username/password" in error or "authentication" in error:
        fix = "set the user and password the upstream expects: upstream socks5://USER:PASS@HOST:PORT"
    else:
        fix = ("start the upstream (e.g. Xray with its SOCKS inbound) or correct `upstream` in the settings: "
               "DC connections go nowhere while it is down")
    return Finding("telegram", name, Severity.ERROR, f"the SOCKS5 upstream {upstream} fails: {error}", fix)


# ----------------------------------------------------------------- the middle proxy (ad tag)

MIDDLE = "middle proxy"


def judge_relay_documents(origins: Mapping[str, str], error: str, url: str) -> Finding:
    """`origins`: each document the engine would use and where from ("your file …", "cached …", "fetched
    from …"); `error` why one could not be had ("" when both were)."""
    if error:
        return Finding("telegram", f"{MIDDLE} configuration", Severity.ERROR,
                       f"{error}: clients that should carry the ad tag are served directly, without it",
                       f"let this server reach {url} (the engine fetches it at start and daily), or give the "
                       "official files with --aes-pwd FILE and the proxy-multi.conf argument")
    return Finding("telegram", f"{MIDDLE} configuration", Severity.OK,
                   "; ".join(f"{doc}: {origin}" for doc, origin in origins.items()))


def judge_relays(results: Mapping[str, str | None], nat_warning: str | None) -> Finding:
    """`results`: each relay (as "DC 2 149.154.175.50:8888") and None when it completed the handshake,
    else why not; `nat_warning` when our address toward the relays is probably not the one they see."""
    failed = {relay: why for relay, why in results.items() if why is not None}
    name = f"{MIDDLE} relays"
    if not results:
        return Finding("telegram", name, Severity.WARNING, "proxy-multi.conf names no relay")
    if not failed:
        return Finding("telegram", name, Severity.OK, f"all {len(results)} relays complete the handshake")
    listed = "; ".join(f"{relay}: {why}" for relay, why in list(failed.items())[:3])
    if nat_warning is not None:
        fix = f"{nat_warning} (setting `nat_info`)"
    elif any("proxy-secret" in why or "closed the connection during" in why for why in failed.values()):
        fix = ("the relays drop the handshake: behind NAT give the public address with --nat-info LOCAL:PUBLIC "
               "(setting `nat_info`); with your own --aes-pwd file, fetch the current proxy-secret")
    else:
        fix = "check the server's outbound traffic to the relays' port; usually Telegram's side if it passes"
    if len(failed) == len(results):
        return Finding("telegram", name, Severity.ERROR,
                       f"no relay completes the handshake ({listed}): ad-tag clients are served directly, "
                       "without the sponsored channel", fix)
    return Finding("telegram", name, Severity.WARNING,
                   f"{len(failed)} of {len(results)} relays fail the handshake ({listed}); their DCs' clients "
                   "go direct while the others' carry the ad tag", fix)


# ----------------------------------------------------------------- the listening port

def is_ours(listener: Listener, own_pids: set[int]) -> bool:
    """Our engine: the service's process (or one of its workers), or a process running mtproxy."""
    if listener.pid is None:
        return False
    return listener.pid in own_pids or "mtproxy" in listener.command or listener.program.startswith("mtproxy")


def judge_port(port: int, listeners: Sequence[Listener], own_pids: set[int], accepts: bool | None,
               free_port: int | None) -> Finding:
    """Who listens on the proxy's port. `accepts`: the loopback connect test (None: not run, offline)."""
    name = f"port {port}"
    move = f"`mtproxy set-port {free_port}` (free now)" if free_port else "`mtproxy set-port PORT` (a free one)"
    others = [x for x in listeners if x.pid is not None and not is_ours(x, own_pids)]
    unknown = [x for x in listeners if x.pid is None]
    if others:
        who = ", ".join(f"{x.program or '?'} (pid {x.pid}) on {x.address}" for x in others[:3])
        return Finding("port", name, Severity.ERROR,
                       f"{port}/tcp is held by {who}, not by the proxy",
                       f"{move}, or move that program off {port}")
    if not listeners:
        return Finding("port", name, Severity.ERROR, f"nothing listens on {port}/tcp",
                       "start the proxy (`mtproxy status` names its service) and read its log; "
                       f"if another program needs {port}: {move}")
    if unknown and len(unknown) == len(listeners):
        return Finding("port", name, Severity.WARNING,
                       f"{port}/tcp is listened on by a process this user cannot see",
                       "run `sudo mtproxy doctor` to name it")
    if accepts is False:
        return Finding("port", name, Severity.ERROR, f"the proxy listens on {port}/tcp but refuses a local "
                                                     "connection", "read the proxy's log; restart it")
    tested = "" if accepts is None else ", accepts a local connection"
    pid = next((x.pid for x in listeners if x.pid is not None), None)
    return Finding("port", name, Severity.OK, f"the proxy (pid {pid}) listens on {port}/tcp{tested}")
