"""Every on-disk location of the proxy, derived from one root (default /opt/vless)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/opt/vless")
ROOT_ENV = "MTPROXY_ROOT"


@dataclass(frozen=True)
class Paths:
    """The files and directories of one installation; nothing here touches the disk."""

    root: Path

    @classmethod
    def resolve(
        cls, root: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
    ) -> Paths:
        """Pick the root: an explicit value (``--root``) wins, then ``MTPROXY_ROOT``, then /opt/vless."""
        environ = os.environ if env is None else env
        if root is not None and str(root) != "":
            return cls(Path(root))
        from_env = environ.get(ROOT_ENV, "")
        return cls(Path(from_env) if from_env else DEFAULT_ROOT)

    @property
    def config_dir(self) -> Path:
        return self.root / "config" / "mtproxy"

    @property
    def secrets_file(self) -> Path:
        return self.config_dir / "mtproxy_secrets.json"

    @property
    def settings_file(self) -> Path:
        return self.config_dir / "mtproxy_config.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data" / "mtproxy"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs" / "mtproxy"

    @property
    def default_link_file(self) -> Path:
        """The plan's single-link file: the link of the default (first active) secret."""
        return self.data_dir / "mtproxy_link.txt"

    @property
    def default_qr_png(self) -> Path:
        return self.data_dir / "mtproxy_qr.png"

    def secret_dir(self, secret_id: str) -> Path:
        """Per-secret link and QR files live in their own directory, named by the secret's id."""
        return self.data_dir / "secrets" / secret_id
