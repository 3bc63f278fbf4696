"""The deployment files shipped as package data (compose, systemd unit, fail2ban, logrotate), rendered."""

from __future__ import annotations

import shlex
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

COMPOSE = "docker-compose.yml"
SYSTEMD_UNIT = "mtproxy.service"
FAIL2BAN_FILTER = "fail2ban-filter.conf"
FAIL2BAN_JAIL = "fail2ban-jail.conf"
LOGROTATE = "logrotate.conf"
STATUS_HOOK = "status-hook.sh"

CONTAINER_UID = 10001  # the image's fixed user; the wizard gives it the mounted directories
CONTAINER_ROOT = "/opt/vless"  # where the image expects the installation root
LOG_NAME = "mtproxy.log"


def template_text(name: str) -> str:
    return resources.files("mtproxy.templates").joinpath(name).read_text(encoding="utf-8")


def render(name: str, **values: object) -> str:
    """`${key}` placeholders; a missing value is an error (KeyError), never an empty string."""
    return string.Template(template_text(name)).substitute({k: str(v) for k, v in values.items()})


@dataclass(frozen=True)
class ProxyFiles:
    """Where the engine finds its files, in the path space it runs in (container or host)."""

    root: str

    @property
    def settings(self) -> str:
        return f"{self.root}/config/mtproxy/mtproxy_config.json"

    @property
    def secrets(self) -> str:
        return f"{self.root}/config/mtproxy/mtproxy_secrets.json"

    @property
    def log_file(self) -> str:
        return f"{self.root}/logs/mtproxy/{LOG_NAME}"

    def run_args(self, drop_to: str | None = None) -> list[str]:
        """`mtproxy run` arguments: port, workers, domain … come from the settings file."""
        args = ["run", "--root", self.root, "--config", self.settings,
                "--secrets-file", self.secrets, "--log-file", self.log_file]
        return [*args, "-u", drop_to] if drop_to else args


def compose_file(image: str, root: Path, port: int, stats_port: int) -> str:
    """The Compose service. Below port 1024 the engine starts as root with only NET_BIND_SERVICE, SETUID and
    SETGID to drop to the mtproxy user after binding (a non-root process cannot use a bounding-set
    capability, and no-new-privileges rules out file capabilities), and DAC_OVERRIDE because the files it
    reads before dropping belong to that user with mode 0600; the drop clears all of them."""
    low = port < 1024
    args = ProxyFiles(CONTAINER_ROOT).run_args(drop_to="mtproxy" if low else None)
    command = "\n".join(f'      - "{a}"' for a in args)
    caps = ("    cap_add: [NET_BIND_SERVICE, SETUID, SETGID, DAC_OVERRIDE]" if low
            else "    # no capabilities: port >= 1024")
    return render(
        COMPOSE, image=image, root=root, port=port, stats_port=stats_port,
        user="0:0" if low else f"{CONTAINER_UID}:{CONTAINER_UID}", command=command, cap_add=caps,
    )


def systemd_unit(mtproxy_bin: str, root: Path, port: int, user: str) -> str:
    args = " ".join(ProxyFiles(str(root)).run_args())
    caps = ("AmbientCapabilities=CAP_NET_BIND_SERVICE\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE"
            if port < 1024 else "CapabilityBoundingSet=")
    return render(SYSTEMD_UNIT, exec_start=f"{mtproxy_bin} {args}", root=root, user=user, capabilities=caps)


def fail2ban_jail(log_file: Path, port: int, banaction: str = "iptables-multiport", backend: str = "polling") -> str:
    return render(FAIL2BAN_JAIL, log_file=log_file, port=port, banaction=banaction, backend=backend)


def fail2ban_filter() -> str:
    return template_text(FAIL2BAN_FILTER)


def logrotate(log_dir: Path) -> str:
    return render(LOGROTATE, log_dir=log_dir)


def status_hook(mtproxy_bin: str, root: Path) -> str:
    """The shell drop-in; both values are shell-quoted (they are paths chosen by the operator)."""
    return render(STATUS_HOOK, mtproxy_bin=shlex.quote(mtproxy_bin), root=shlex.quote(str(root)))
