"""The fake middle-proxy relay (mtproxy.testkit.fakerelay, written apart from the engine's codec) as a bench
server: its own process, so its CPU is not counted as the engine's, in front of the load tool's fake DC.

Prints `ready` once listening and `linked` once the first relay connection finished its handshake (before
that the engine would send clients direct). A `legs` line on stdin is answered with the number of DC
connections still open (conn ids the proxy has not closed), as a JSON line. On SIGTERM it prints one JSON line: what it
carried."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

import uvloop

from bench import wire
from bench.fakedc import raise_nofile
from mtproxy.testkit.fakerelay import FakeRelay

# Records of what the relay carried are kept per request; a subject of the default benchmark sends fewer.
MAX_RECORDS = 200_000
LINK_WAIT = 120.0  # seconds the relay waits for the engine's first link before it stops watching


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    host, port = args.dc.rsplit(":", 1)
    # Long timeouts: a bench phase may leave a link or a DC leg quiet for minutes, and the DC sink drains
    # a whole bulk upload.
    relay = FakeRelay(Path(args.secret_file).read_bytes(), (host, int(port)), dc_id=wire.DC_ID,
                      idle_timeout=3600.0, dc_timeout=60.0, max_records=MAX_RECORDS)
    await relay.start(args.host, args.port)
    print("ready", flush=True)

    async def announce_link() -> None:
        if await relay.wait_for(lambda: any(link.record.ready for link in relay.links), LINK_WAIT):
            print("linked", flush=True)

    async def answer_questions() -> None:
        questions = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(questions), sys.stdin)
        while line := await questions.readline():
            if line.strip() == b"legs":
                print(json.dumps({"event": "legs", "legs": relay.open_legs}), flush=True)

    tasks = [asyncio.create_task(announce_link()), asyncio.create_task(answer_questions())]
    await stop.wait()
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    carried = {
        "links": relay.accepted,
        "requests": len(relay.requests),
        "request_bytes": sum(r.size for r in relay.requests),
        "answers": sum(1 for s in relay.sent if s.op == "ans"),
        "closes_from_proxy": len(relay.closes_from_proxy),
        "errors": list(relay.errors)[-20:],
        "capped": len(relay.requests) == MAX_RECORDS or len(relay.sent) == MAX_RECORDS,
    }
    await relay.stop()
    print(json.dumps(carried), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dc", required=True, help="the fake DC, host:port")
    parser.add_argument("--secret-file", required=True, help="the proxy-secret the relay holds")
    args = parser.parse_args(argv)
    raise_nofile()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args))


if __name__ == "__main__":
    main()
