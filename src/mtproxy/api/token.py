"""The API's bearer token: 32 random bytes in a 0600 file, created by `mtproxy api-token`, never logged."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ..store import write_atomic

TOKEN_BYTES = 32


class TokenError(Exception):
    """The token file is missing, unreadable, empty or readable by others; the message says which."""


def create_token(path: Path, rotate: bool = False) -> bool:
    """Write a new token unless one exists (or `rotate`); True when a token was written."""
    if path.exists() and not rotate:
        return False
    write_atomic(path, (secrets.token_urlsafe(TOKEN_BYTES) + "\n").encode(), mode=0o600)
    return True


def read_token(path: Path) -> str:
    """The token, refusing a file other users may read (it would let them manage the proxy)."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            token = handle.read(1024).strip()
    except FileNotFoundError:
        raise TokenError(f"{path}: no API token yet — create one with `mtproxy api-token`") from None
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the API token: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"{path}: the API token is readable by other users — `chmod 600 {path}` or "
                         "`mtproxy api-token --rotate`")
    if len(token) < 16:
        raise TokenError(f"{path}: the API token is empty or too short — `mtproxy api-token --rotate`")
    return token
