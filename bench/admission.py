"""CPU per session of a worker's admission and release (`Enforcer.open` + `Grant.close`), no event loop,
no sockets: what the per-secret limits add to each handshake, apart from the handshake itself.

    PYTHONPATH=src python3 -m bench.admission [--sessions N] [--limited]

`--limited` gives the secret a connection limit that never binds, so every session takes the shared
table's lock twice (admission and release); without it the secret has no limits and the worker counts its
sessions itself, folding them into the table once a second (runtime/enforce.py). Prints the best of five
rounds of CPU time per session, then the table's figures after a final sync, which must show every session.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from mtproxy.accounts.limits import Limits
from mtproxy.runtime.accounting import AccountingTable
from mtproxy.runtime.enforce import Enforcer
from mtproxy.stats.counters import Counters

ROUNDS = 5
LOCAL = ("0.0.0.0", 443)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.admission", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions per round")
    parser.add_argument("--limited", action="store_true", help="a connection limit that never binds")
    args = parser.parse_args()
    table = AccountingTable(b"k" * 16)
    enforcer = Enforcer(table, Counters(started_at=0.0), lambda: datetime.now(UTC), time.monotonic)
    enforcer.update({"team": Limits(max_connections=10**9) if args.limited else Limits()})
    peers = [(f"192.0.2.{index % 250 + 1}", 1024 + index % 60000) for index in range(args.sessions)]
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time_ns()
        for peer in peers:
            grant = enforcer.open("team", peer, LOCAL)
            assert grant is not None
            grant.close()
        best = min(best, (time.process_time_ns() - started) / args.sessions)
        enforcer.sync()
    slot = table.slot("team")
    assert slot is not None
    live = table.read(slot)
    print(f"{'limited' if args.limited else 'no limits'}: {best:.0f} ns CPU per session (best of {ROUNDS});"
          f" table: {live.connections} open, {live.opened} opened")
    table.close()


if __name__ == "__main__":
    main()
