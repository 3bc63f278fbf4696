"""The running proxy of the root in use: find it through the root's own install record, signal or restart it,
and compare what its engine loaded with the store.

One root, one installation: without an install record naming this root (host/record.py) no container or unit
is queried, signalled or restarted, and a stats endpoint counts as this root's engine only when it says it
reads this root's store.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..host.layout import HostLayout
from ..host.record import Ownership, ownership, same_root
from ..host.runner import CommandError, Runner
from ..host.service import ServiceState, reload_command, restart_proxy, service_state, signal_reload
from ..paths import Paths
from ..settings import Settings
from ..stats.digest import secrets_digest
from ..store import StoreData

STATS_TIMEOUT = 2.0
RELOAD_WAIT = 5.0  # SIGHUP reloads at once; the file watcher alone needs up to its interval (1 s) + a publish

def detect(runner: Runner, paths: Paths) -> ServiceState:
    """This root's service as its manager reports it; "not installed" (and no query) without its record."""
    return service_state(runner, HostLayout.resolve(paths.root), ownership(paths))


def fetch_stats(port: int, timeout: float = STATS_TIMEOUT) -> dict[str, str] | None:
    """The engine's /stats as a dict, or None when nothing answers on 127.0.0.1:<port>."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=timeout) as response:
            body = response.read(1 << 20).decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    stats: dict[str, str] = {}
    for line in body.splitlines():
        key, sep, value = line.partition("\t")
        if sep and key:
            stats[key.strip()] = value.strip()
    return stats


def fetch_engine(port: int, timeout: float = STATS_TIMEOUT) -> dict[str, Any] | None:
    """The engine's /stats.json, or None when nothing (or an engine without it) answers on 127.0.0.1:<port>."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=timeout) as response:
            doc = json.loads(response.read(4 << 20))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("kind") == "mtproxy-stats" else None


def stat_int(stats: dict[str, str] | None, key: str) -> int | None:
    """A counter if the engine reported it; missing or garbled keys are None, never an exception."""
    if not stats or key not in stats:
        return None
    try:
        return int(float(stats[key]))
    except ValueError:
        return None


def stats_port(own: Ownership, settings: Settings) -> int:
    """An installation serves stats where its record says; an engine run by hand where the settings say."""
    return own.record.stats_port if own.record is not None else settings.stats_port


def engine_of_root(engine: dict[str, Any] | None, own: Ownership, paths: Paths) -> bool:
    """Is this engine the root's? Its installation's engine (on the record's stats port), or an engine run
    by hand that reads this root's store; never another installation's merely on the same port."""
    if engine is None:
        return False
    if own.record is not None:
        return True
    store = engine.get("store")
    return isinstance(store, str) and same_root(store, paths.secrets_file)


@dataclass(frozen=True)
class Verdict:
    """Does the engine serve what the store holds?"""

    ok: bool
    detail: str
    final: bool = False  # waiting longer will not change it (the engine failed to read the store)


def compare(engine: dict[str, Any], store: StoreData) -> Verdict:
    """Every worker's loaded set against the store's active secrets (count and digest)."""
    want_count = len(store.active_records())
    want = secrets_digest(store.active_secrets())
    sets = engine.get("secret_sets")
    if not isinstance(sets, list) or not sets:
        return Verdict(False, "the engine does not say what it loaded (an older version?)", True)
    errors = [str(s.get("error")) for s in sets if isinstance(s, dict) and s.get("error")]
    if errors:
        return Verdict(False, f"the engine cannot read the store: {errors[0]}", True)
    behind = [s for s in sets if not isinstance(s, dict) or s.get("digest") != want]
    if not behind:
        workers = f", all {len(sets)} workers" if len(sets) > 1 else ""
        return Verdict(True, f"the engine serves the store's {want_count} active secret(s){workers}")
    if len(behind) < len(sets):
        return Verdict(False, f"{len(sets) - len(behind)} of {len(sets)} workers serve the store; "
                              f"{len(behind)} still serve an older set")
    loaded = behind[0].get("count") if isinstance(behind[0], dict) else "?"
    return Verdict(False, f"the engine serves {loaded} secret(s), not the store's {want_count} "
                          "(it has not reloaded the store)")


@dataclass(frozen=True)
class ApplyOutcome:
    """What happened to the running proxy, as one sentence for the operator."""

    message: str
    live: bool  # True when the change is confirmed in effect in this root's running proxy
    failed: bool = False  # the proxy runs but could not take the change (the message says why)


def reload_secrets(
    runner: Runner,
    paths: Paths,
    settings: Settings,
    store: StoreData,
    wait: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ApplyOutcome:
    """SIGHUP this root's service (the engine also watches the file), then confirm from /stats.json that
    every worker serves `store`. Another installation's container or unit is never signalled."""
    own = ownership(paths)
    service = service_state(runner, HostLayout.resolve(paths.root), own)
    port = stats_port(own, settings)
    signalled = False
    if service.running:
        signalled = signal_reload(runner, service)
        if runner.dry_run:
            return ApplyOutcome(f"would signal the proxy to reload ({' '.join(reload_command(service))})", False)
    engine = fetch_engine(port)
    if not engine_of_root(engine, own, paths):
        if service.running:
            return ApplyOutcome(f"signalled {service.name}, but its stats endpoint (127.0.0.1:{port}) does not "
                                "answer: the reload is not confirmed", False)
        why = f" ({own.problem})" if own.record is None else ""
        return ApplyOutcome(f"no proxy is running for this root{why}: the store is saved and is read when "
                            "it starts", False)
    deadline = time.monotonic() + (RELOAD_WAIT if wait is None else wait)
    verdict = compare(engine, store) if engine is not None else Verdict(False, "no answer")
    while not verdict.ok and not verdict.final and time.monotonic() < deadline:
        sleep(0.1)
        engine = fetch_engine(port)
        verdict = compare(engine, store) if engine is not None else Verdict(False, "its stats stopped answering")
    if verdict.ok:
        return ApplyOutcome(f"the running proxy reloaded the secrets ({verdict.detail})", True)
    how = f"signalled {service.name}; " if signalled else ""
    return ApplyOutcome(f"{how}not confirmed: {verdict.detail}", False, failed=verdict.final)


def restart(runner: Runner, paths: Paths) -> ApplyOutcome:
    """Restart this root's proxy so a new port or worker count takes effect; a stopped proxy stays stopped,
    and without this root's install record nothing is restarted."""
    own = ownership(paths)
    service = service_state(runner, HostLayout.resolve(paths.root), own)
    if not service.running:
        if own.record is None:
            return ApplyOutcome(f"no proxy is running for this root ({own.problem}): saved, and used when "
                                "it starts; no service was restarted", False)
        if service.state == "not ours":
            return ApplyOutcome(f"{service.problem}: saved; it was not restarted", False)
        return ApplyOutcome(f"the proxy is {service.state}: saved, and used when it starts", False)
    try:
        restart_proxy(runner, paths, own)  # rewrites our Compose file or unit, moves the UFW rule and jail
    except (CommandError, ValueError, OSError) as exc:
        from .errors import Failure, OpError

        problem = exc.problem if isinstance(exc, CommandError) else str(exc)
        raise OpError(f"saved, but restarting the proxy failed: {problem}",
                      "check `mtproxy status` and the proxy's log", Failure.FAILED) from None
    if runner.dry_run:
        return ApplyOutcome(f"would restart the proxy ({service.manager} {service.name})", False)
    return ApplyOutcome(f"restarted the proxy ({service.manager} {service.name})", True)
