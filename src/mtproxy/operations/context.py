"""What every operation is given: the installation's paths, the host runner, the clock and randomness."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ..host.runner import Runner
from ..paths import Paths
from .usage_source import UsageSource


@dataclass
class Ops:
    """Built by the CLI from its Env and by the API at start-up; tests build their own."""

    paths: Paths
    runner: Runner  # its dry_run says "change nothing, say what would change"
    clock: Callable[[], datetime]
    random16: Callable[[], bytes]
    usage: UsageSource
    server_override: str | None = None  # --server / MTPROXY_SERVER: the address links carry
    actor: str = ""  # who asked (cli:<user>, api): kept as a new secret's created_by

    @property
    def dry_run(self) -> bool:
        return self.runner.dry_run
