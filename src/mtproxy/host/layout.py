"""Where the deployment writes on the host outside the installation root (/etc by default; tests use a temp dir)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SYSCONF_ENV = "MTPROXY_SYSCONF"  # tests point this at a temp dir so nothing under /etc is touched


@dataclass(frozen=True)
class HostLayout:
    etc: Path
    root: Path

    @classmethod
    def resolve(cls, root: Path, env: Mapping[str, str] | None = None) -> HostLayout:
        environ = os.environ if env is None else env
        return cls(Path(environ.get(SYSCONF_ENV) or "/etc"), root)

    @property
    def fail2ban_dir(self) -> Path:
        return self.etc / "fail2ban"

    @property
    def fail2ban_filter(self) -> Path:
        return self.fail2ban_dir / "filter.d" / "mtproxy.conf"

    @property
    def fail2ban_jail(self) -> Path:
        return self.fail2ban_dir / "jail.d" / "mtproxy.conf"

    @property
    def logrotate(self) -> Path:
        return self.etc / "logrotate.d" / "mtproxy"

    @property
    def systemd_unit(self) -> Path:
        return self.etc / "systemd" / "system" / "mtproxy.service"

    @property
    def share(self) -> Path:
        """/usr/local/share; beside a test's MTPROXY_SYSCONF (<dir>/etc → <dir>/usr/local/share) otherwise."""
        return Path("/usr/local/share") if self.etc == Path("/etc") else self.etc.parent / "usr" / "local" / "share"

    @property
    def completions(self) -> dict[str, Path]:
        """Where bash-completion, zsh and fish look for a command's completion without any configuration."""
        return {
            "bash": self.share / "bash-completion" / "completions" / "mtproxy",
            "zsh": self.share / "zsh" / "site-functions" / "_mtproxy",
            "fish": self.share / "fish" / "vendor_completions.d" / "mtproxy.fish",
        }

    @property
    def man_page(self) -> Path:
        return self.share / "man" / "man1" / "mtproxy.1"

    @property
    def status_hook(self) -> Path:
        """The drop-in a host's `vless status` calls for mtproxy's section (docs/deploy.md)."""
        return self.compose_dir / "status-hook"

    @property
    def compose_dir(self) -> Path:
        """Outside config/: the VPN stack's installer resets that tree to root 0600 on every run."""
        return self.root / "mtproxy"

    @property
    def compose_file(self) -> Path:
        return self.compose_dir / "docker-compose.yml"

    @property
    def install_record(self) -> Path:
        """What the wizard installed (port, UFW mode, manager, image), so uninstall removes exactly that."""
        return self.compose_dir / "install.json"
