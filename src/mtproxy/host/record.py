"""The install record (<root>/mtproxy/install.json): what setup installed for one root, and the rule that a
command may act on a container or unit only when the record of the root in use names that root.

Schema 2 names the root, the service (container or unit), the store and the stats port. A schema-1 record
(written before) named none of them; it is migrated on reading by finding the root in what it installed
(the Compose file's path, the unit's `--root`, the jail's log path), never by assuming the root it was found
under: a copy of a root (`cp -a /opt/vless /tmp/try`) carries the record of the original along.

Schema 3 adds `haproxy`: where setup put the proxy behind the stack's HAProxy (its config file, the public
port, the check and reload commands), so uninstall takes the marked block away; a schema-2 record had none.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_STATS_PORT
from ..paths import Paths
from ..settings import read_settings
from ..store import StoreError
from . import docker, systemd
from .files import write_file
from .layout import HostLayout

RECORD_SCHEMA = 3


@dataclass(frozen=True)
class HaproxyRecord:
    """The HAProxy integration setup made: which file holds our marked block and how to check and reload it."""

    config: str
    public_port: int
    check: tuple[str, ...]
    reload: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "public_port": self.public_port, "check": list(self.check),
                "reload": list(self.reload)}

    @classmethod
    def from_json(cls, doc: Any) -> HaproxyRecord | None:
        if doc is None:
            return None
        if not isinstance(doc, dict) or not all(isinstance(w, str) for w in [*doc["check"], *doc["reload"]]):
            raise ValueError("haproxy: not an object of strings")
        return cls(str(doc["config"]), int(doc["public_port"]), tuple(doc["check"]), tuple(doc["reload"]))


def service_name(manager: str) -> str:
    """The container or unit setup creates for a manager; "" when nothing runs the proxy."""
    return {"docker": docker.CONTAINER, "systemd": systemd.UNIT}.get(manager, "")


@dataclass
class InstallRecord:
    """Persisted by setup; read by every command that would touch the installed service."""

    port: int
    manager: str
    ufw_mode: str
    image: str
    files: list[str] = field(default_factory=list)
    ufw_added: bool = False  # setup added our tagged UFW rule (so uninstall and set-port may touch it)
    user_created: bool = False  # setup added the system user `mtproxy` (so uninstall may delete it)
    root: str = ""  # the installation root this record belongs to ("" when unknown: then it is nobody's)
    service: str = ""  # the container (docker) or unit (systemd) that serves this root
    store: str = ""  # the secrets store the service reads, as a host path
    stats_port: int = DEFAULT_STATS_PORT
    haproxy: HaproxyRecord | None = None  # behind the stack's HAProxy: uninstall removes our block there
    schema: int = RECORD_SCHEMA
    migrated_from: int | None = field(default=None, compare=False, repr=False)  # not saved

    @classmethod
    def new(cls, paths: Paths, port: int, manager: str, ufw_mode: str, image: str, files: list[str],
            ufw_added: bool, user_created: bool, stats_port: int,
            haproxy: HaproxyRecord | None = None) -> InstallRecord:
        """A record for what setup just installed under `paths.root`."""
        return cls(port, manager, ufw_mode, image, files, ufw_added, user_created,
                   root=os.path.abspath(paths.root), service=service_name(manager),
                   store=os.path.abspath(paths.secrets_file),
                   stats_port=stats_port, haproxy=haproxy)

    @classmethod
    def load(cls, path: Path) -> InstallRecord | None:
        """The record at `path`, migrated to the current schema; None when missing or unreadable."""
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                return None
            record = cls(int(doc["port"]), str(doc["manager"]), str(doc["ufw_mode"]), str(doc["image"]),
                         [str(f) for f in doc.get("files", [])], bool(doc.get("ufw_added", False)),
                         bool(doc.get("user_created", False)))
            schema = int(doc.get("schema", 1))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if schema == 1:
            return _migrate_v1(record, path)
        if schema not in (2, RECORD_SCHEMA):
            return None  # written by a newer version: guess nothing about it
        try:
            record.root = str(doc["root"])
            record.service = str(doc["service"])
            record.store = str(doc["store"])
            record.stats_port = int(doc["stats_port"])
            # Schema 2 knew no HAProxy integration: none was made.
            record.haproxy = HaproxyRecord.from_json(doc.get("haproxy")) if schema == RECORD_SCHEMA else None
        except (KeyError, ValueError, TypeError):
            return None
        if schema == 2:
            record.migrated_from = 2
        return record

    def save(self, path: Path) -> None:
        doc: dict[str, Any] = asdict(self)
        doc.pop("migrated_from")
        doc["haproxy"] = self.haproxy.to_json() if self.haproxy is not None else None
        doc["schema"] = RECORD_SCHEMA
        write_file(path, json.dumps(doc, indent=2) + "\n", 0o600)


def _migrate_v1(record: InstallRecord, path: Path) -> InstallRecord:
    """Name the root, service, store and stats port a schema-1 record implied; root "" when unprovable."""
    listed = [Path(f) for f in record.files]
    root = ""
    for file in listed:
        if file.name == "docker-compose.yml" and file.parent.name == "mtproxy":
            root = str(file.parent.parent)
    if not root:
        for file in listed:
            root = root or _root_in(file, r"--root\s+(\S+)") or _root_in(
                file, r"logpath\s*=\s*(\S+)/logs/mtproxy/[^/\s]+$")
    record.root = root
    record.service = service_name(record.manager)
    record.store = str(Paths(Path(root)).secrets_file) if root else ""
    record.stats_port = _settings_stats_port(Paths(Path(root))) if root else DEFAULT_STATS_PORT
    record.schema = RECORD_SCHEMA
    record.migrated_from = 1
    return record


def _root_in(file: Path, pattern: str) -> str:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1) if found else ""


def _settings_stats_port(paths: Paths) -> int:
    try:
        return read_settings(paths.settings_file).stats_port
    except (StoreError, ValueError):
        return DEFAULT_STATS_PORT


def same_root(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


@dataclass(frozen=True)
class Ownership:
    """This root's record, or why there is none: the one gate before any service action or report."""

    record: InstallRecord | None
    problem: str  # "" when the record is this root's

    @property
    def service(self) -> str:
        """The container or unit this root may signal, restart and report on; "" for none."""
        return self.record.service if self.record is not None else ""


def ownership(paths: Paths, layout: HostLayout | None = None) -> Ownership:
    """Read the record of `paths.root` and check that it names that root."""
    layout = layout or HostLayout.resolve(paths.root)
    where = layout.install_record
    record = InstallRecord.load(where)
    if record is None:
        what = "no install record" if not where.exists() else "an unreadable install record"
        return Ownership(None, f"{what} at {where}")
    if not record.root:
        return Ownership(None, f"the install record at {where} does not say which root it belongs to "
                               "(rerun `mtproxy setup` for this root)")
    if not same_root(record.root, paths.root):
        return Ownership(None, f"the install record at {where} belongs to {record.root}, not {paths.root}")
    return Ownership(record, "")
