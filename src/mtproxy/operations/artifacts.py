"""Link files and QR codes under <root>/data/mtproxy, kept in step with the store after every change."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..links import ProxyLinks, ServerUnknownError, guess_public_address, make_links
from ..paths import Paths
from ..qr import write_qr_files
from ..settings import Settings, read_settings
from ..store import SecretRecord, StoreData, remove_stale_temps, update_store, write_atomic
from .errors import Failure, OpError


@dataclass(frozen=True)
class ServerChoice:
    """The address links carry and where it came from (configured, --server, or guessed)."""

    address: str
    source: str
    warning: str | None = None


@dataclass(frozen=True)
class SecretFiles:
    link_file: Path
    png: Path
    svg: Path


def choose_server(settings: Settings, override: str | None) -> ServerChoice | None:
    """--server / MTPROXY_SERVER, then the settings file, then the routing-table guess; None if nothing."""
    if override:
        return ServerChoice(override, "--server")
    if settings.server:
        return ServerChoice(settings.server, "config")
    try:
        guess = guess_public_address()
    except ServerUnknownError:
        return None
    return ServerChoice(guess.address, "guessed from the default route", guess.warning)


def require_server(settings: Settings, override: str | None) -> ServerChoice:
    choice = choose_server(settings, override)
    if choice is None:
        raise OpError(
            "no server address for links: none configured and this host has no default route",
            "set one with `mtproxy set-server HOST` (an IP or, better, a domain name)",
            Failure.UNAVAILABLE,
        )
    return choice


def links_for(record: SecretRecord, settings: Settings, server: ServerChoice) -> ProxyLinks:
    return make_links(server.address, settings.port, record.secret())


def files_for(paths: Paths, record: SecretRecord) -> SecretFiles:
    folder = paths.secret_dir(record.id)
    return SecretFiles(folder / "link.txt", folder / "qr.png", folder / "qr.svg")


def _link_text(links: ProxyLinks) -> bytes:
    return f"{links.tg}\n{links.https}\n".encode()


def write_all(paths: Paths, data: StoreData, settings: Settings, server: ServerChoice | None) -> list[str]:
    """Rewrite every active secret's files and the default ones; drop files of removed/inactive secrets.

    Called with the store's lock held (see `rewrite_all`), so no other writer is live and the temp files
    of one that was killed mid-write can go. Returns notes for the operator (e.g. why nothing was written).
    The files hold secrets: mode 0600.
    """
    notes: list[str] = []
    secrets_dir = paths.data_dir / "secrets"
    active = data.active_records()
    keep = {rec.id for rec in active}
    if secrets_dir.is_dir():
        for entry in secrets_dir.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
    for rec in active:
        _remove_temps(*_files(files_for(paths, rec)))
    default_files = (paths.default_link_file, paths.default_qr_png, paths.default_qr_png.with_suffix(".svg"))
    _remove_temps(*default_files)
    if server is None:
        notes.append(NO_SERVER_NOTE)
        return notes
    for rec in active:
        links = links_for(rec, settings, server)
        files = files_for(paths, rec)
        _write_if_changed(files.link_file, _link_text(links), links.tg, files.png, files.svg)
    default = data.default_record()
    if default is None:
        for stale in default_files:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    else:
        links = links_for(default, settings, server)
        _write_if_changed(paths.default_link_file, _link_text(links), links.tg, *default_files[1:])
    return notes


NO_SERVER_NOTE = "links and QR codes not written: no server address (use `mtproxy set-server HOST`)"


def _files(files: SecretFiles) -> tuple[Path, Path, Path]:
    return files.link_file, files.png, files.svg


def _remove_temps(*files: Path) -> None:
    for file in files:
        remove_stale_temps(file)


@dataclass(frozen=True)
class Refresh:
    """What `rewrite_all` wrote the links from, and why some were not written (empty when all were)."""

    settings: Settings
    server: ServerChoice | None
    notes: list[str]

    @property
    def written(self) -> bool:
        return not self.notes


def rewrite_all(paths: Paths, override: str | None) -> Refresh:
    """Rewrite every link file and QR code from the store and the settings, both read under the store's
    lock: a command that changes the port or server and then calls this, and one that changes a secret
    (which writes links under the same lock), cannot leave links behind on the old port. Raises the
    store's errors and OSError for the caller to judge."""
    refresh: list[Refresh] = []

    def same(data: StoreData) -> tuple[StoreData, None]:
        return data, None

    def write(data: StoreData) -> None:
        settings = read_settings(paths.settings_file)
        server = choose_server(settings, override)
        refresh.append(Refresh(settings, server, write_all(paths, data, settings, server)))

    update_store(paths.secrets_file, same, after=write)
    return refresh[0]


def _write_if_changed(link_file: Path, link_text: bytes, qr_text: str, png: Path, svg: Path) -> None:
    """Skip the QR rendering when the link file already says the same and the codes exist."""
    try:
        same = link_file.read_bytes() == link_text and png.exists() and svg.exists()
    except OSError:
        same = False
    if same:
        return
    write_qr_files(qr_text, png, svg)
    # The link file last: its content is the marker that the codes beside it match.
    write_atomic(link_file, link_text)
