"""Admission beyond the connection count: caps on unauthenticated connections (in total and per IP), the
descriptor headroom kept for sessions already admitted, and one log line per interval for each refusal."""

from __future__ import annotations

import errno
import logging
import resource

from mtproxy.config import Limits
from mtproxy.stats.counters import Counters

from .logs import Notice

log = logging.getLogger("mtproxy.guard")

# descriptors kept free for what admitted connections still need: a DC or mask leg (one each), the raw
# relay's dups and pipes; a new connection whose own descriptor reaches into this reserve is refused
FD_RESERVE = 16
NOTICE_INTERVAL = 10.0  # seconds between two log lines about the same refusal


def is_fd_exhaustion(exc: OSError) -> bool:
    return exc.errno in (errno.EMFILE, errno.ENFILE)


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Guard:
    """Counts unauthenticated connections per worker and per IP; reports refusals once per interval."""

    def __init__(self, limits: Limits, counters: Counters) -> None:
        self._limits = limits
        self._counters = counters
        self.per_ip: dict[str, int] = {}
        self._fd_limit = fd_limit()
        self._fd_notice = Notice(NOTICE_INTERVAL, self._report_fds)
        self._unauth_notice = Notice(NOTICE_INTERVAL, self._report_unauthenticated)

    # ----------------------------------------------------------------- unauthenticated connections

    # Behind a balancer the client's address is known only once its PROXY header is read: the cap on all
    # unauthenticated connections is taken at accept, the per-IP one after the header (runtime/proxied.py).
    # The direct path takes both at once.

    def admit_unauthenticated(self, ip: str) -> bool:
        if not self.reserve_unauthenticated():
            return False
        if not self.claim_unauthenticated_ip(ip):
            self.unreserve_unauthenticated()
            return False
        return True

    def reserve_unauthenticated(self) -> bool:
        counters = self._counters
        if counters.unauthenticated >= self._limits.max_unauthenticated:
            counters.refused_unauthenticated += 1
            self._unauth_notice.hit()
            return False
        counters.unauthenticated += 1
        return True

    def claim_unauthenticated_ip(self, ip: str) -> bool:
        """After reserve_unauthenticated: the per-IP cap; authenticated_or_gone(ip) gives both back."""
        held = self.per_ip.get(ip, 0)
        if self._limits.max_unauthenticated_per_ip and held >= self._limits.max_unauthenticated_per_ip:
            self._counters.refused_unauthenticated_ip += 1
            self._unauth_notice.hit()
            return False
        self.per_ip[ip] = held + 1
        return True

    def unreserve_unauthenticated(self) -> None:
        """A reserved connection that never got as far as claim_unauthenticated_ip is gone."""
        self._counters.unauthenticated -= 1

    def authenticated_or_gone(self, ip: str) -> None:
        """The connection left the unauthenticated set (it authenticated, or it closed)."""
        self._counters.unauthenticated -= 1
        left = self.per_ip.get(ip, 1) - 1
        if left > 0:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)

    def _report_unauthenticated(self, count: int) -> None:
        log.warning("unauthenticated connections at their cap (%d per worker, %d per IP): %d connections refused",
                    self._limits.max_unauthenticated, self._limits.max_unauthenticated_per_ip, count)

    # ----------------------------------------------------------------- descriptors

    def read_fd_limit(self) -> int:
        """The descriptor limit, read now (prlimit may change it any time): the listener reads it for every
        connection it accepts (runtime/accept.py), just before the connection is admitted."""
        self._fd_limit = limit = fd_limit()
        return limit

    def fd_headroom(self, fileno: int) -> bool:
        """Descriptors are handed out lowest first, so a new socket's number is how many are in use. The
        limit is the one read at this connection's accept (read_fd_limit): one getrlimit per connection."""
        if fileno < self._fd_limit - FD_RESERVE:
            return True
        self.out_of_fds()
        return False

    def out_of_fds(self) -> None:
        self._counters.out_of_fds += 1
        self._fd_notice.hit()

    def _report_fds(self, count: int) -> None:
        self._fd_limit = fd_limit()
        log.warning("out of file descriptors (limit %d): %d connections refused", self._fd_limit, count)

    def close(self) -> None:
        self._fd_notice.close()
        self._unauth_notice.close()
