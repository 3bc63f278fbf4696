"""The HAProxy block follows the store and the settings: after a change of the secrets, of the secret domain
base or of the proxy's loopback port, the block setup added is rewritten through `host.haproxy` (checked
with `haproxy -c`, reloaded, the old file back on failure). Only when this root's install record says the
proxy is behind HAProxy; nothing happens otherwise.

Order: the store (or settings) change comes first and stands whatever HAProxy does. The store is the truth
the block is derived from; a block that lags it only routes a name too many (the proxy refuses it and masks
the connection, as for any prober) or a new name not yet (its client waits for the fix). A block changed
first and a store write that then failed would be the worse case: a name routed away from the proxy while
its secret still exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..host import haproxy
from ..host.layout import HostLayout
from ..host.record import InstallRecord, ownership
from ..host.runner import CommandError, Runner
from ..paths import Paths
from ..settings import Settings
from ..store import StoreData

REAPPLY = "`mtproxy setup -n` re-applies the block once the cause is fixed (the next secret change also does)"


def routed_domains(data: StoreData) -> list[str]:
    """The fake-TLS names HAProxy sends to the proxy: every ee secret's domain in the store, active or not.
    A disabled or expired secret's name still reaches the proxy, which refuses it and masks the connection
    as for any prober, and an expiry (which happens without a command) needs no reload of HAProxy."""
    return sorted({rec.domain for rec in data.secrets if rec.type == "ee" and rec.domain})


@dataclass(frozen=True)
class Followed:
    """What happened to the HAProxy block: `note` for the operator ("" when there is no integration or the
    block was already right), `ok` False when the block could not be brought up to date."""

    note: str
    ok: bool = True


NOT_BEHIND = Followed("")


def integration(paths: Paths) -> InstallRecord | None:
    """This root's install record when it says the proxy is behind HAProxy, else None."""
    record = ownership(paths, HostLayout.resolve(paths.root)).record
    return record if record is not None and record.haproxy is not None else None


def follow(paths: Paths, runner: Runner, settings: Settings, data: StoreData) -> Followed:
    """Rewrite the block for the store's names, the settings' domain base and the proxy's loopback port
    (the settings' `listen`, else the recorded port). Never raises for HAProxy's refusal or a failed reload:
    the change that led here stands, and the note says so and how to re-apply."""
    record = integration(paths)
    if record is None or record.haproxy is None:
        return NOT_BEHIND
    hp = record.haproxy
    port = settings.bound_port if settings.extra.get("listen") else record.port
    domains = routed_domains(data)
    base = settings.secret_domain_base
    if not domains and not base:
        return Followed(f"no fake-TLS name left to route: the block in {hp.config} is left as it was (the proxy "
                        "refuses names of no secret)")
    what = ", ".join([*([f"*.{base}"] if base else []), *domains])
    if runner.dry_run:
        return Followed(f"would route {what} to 127.0.0.1:{port} in {hp.config} (checked, then reloaded)")
    try:
        changed = haproxy.add(runner, Path(hp.config), domains, port, haproxy.Control(hp.check, hp.reload),
                              hp.public_port, base)
    except haproxy.HaproxyError as exc:
        return Followed(f"NOT updated: {exc.what}; the change above stands; {REAPPLY}", ok=False)
    except (CommandError, OSError) as exc:
        return Followed(f"NOT updated: {exc}; the change above stands; {REAPPLY}", ok=False)
    if not changed:
        return Followed("")
    return Followed(f"routes {what} on port {hp.public_port} to 127.0.0.1:{port} ({hp.config}, checked and "
                    "reloaded)")
