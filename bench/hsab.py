"""Handshake CPU of several engines side by side: the load tool's handshake phase in short interleaved
rounds, each engine's CPU per handshake as a ratio to the plain relay of the same round, so a drift of the
machine (a shared VM's neighbours) hits every subject of a round alike. For A/B comparisons of changes that
move a handshake by a few per cent, where the load tool's runs scatter by ±10 %: many short rounds, a
median of per-round ratios, and the spread of those ratios to show what the median can tell apart.

    python3 -m bench.hsab --engine before="$BEFORE" --engine after="$AFTER" --modes classic,ee --rounds 12

Each `--engine` is LABEL=TEMPLATE, the template as the load tool's `--engine-cmd` (its placeholders). The
subjects of a round run in a shuffled order; each is started, measured over `--handshakes` handshakes
(`--hs-parallel` at a time, from the load tool's clients) and stopped. CPU is the subject's, to the
nanosecond (bench/procstat.py)."""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import time

from bench import loadtool, netns
from bench.harness import start_module
from bench.loadtool import DC_PORT, DEFAULT_ENGINE, MASK_PORT, Bench


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.hsab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", action="append", default=[], metavar="LABEL=TEMPLATE",
                   help="an engine to measure (repeat); default: this checkout as `engine`")
    p.add_argument("--modes", default="classic,ee", help="client modes (classic,dd,ee)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--handshakes", type=int, default=2000, help="per subject and round")
    p.add_argument("--hs-parallel", type=int, default=64)
    p.add_argument("--pin", action="store_true", help="the subject on CPU 0, the load on the others")
    p.add_argument("--seed", type=int, default=None, help="of the shuffled order (default: random)")
    p.add_argument("--out", default=None, help="write every round's figures here as JSON")
    args = p.parse_args(argv)
    engines: dict[str, str] = {}
    for spec in args.engine or [f"engine={DEFAULT_ENGINE}"]:
        label, sep, template = spec.partition("=")
        if not sep or not label or not template.strip():
            p.error(f"--engine takes LABEL=TEMPLATE, not {spec!r}")
        if label in engines or label == "plain":
            p.error(f"engine label {label!r} is taken")
        engines[label] = template
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in loadtool.MODES for m in modes):
        p.error(f"--modes takes some of {','.join(loadtool.MODES)}")
    if args.rounds < 1 or args.handshakes < 100:
        p.error("at least one round of 100 handshakes")
    args.engines, args.mode_list = engines, modes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # a bad command line is refused before anything starts
    netns.ensure_isolated("bench.hsab")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    netns.tune_namespace()
    tool = loadtool.parse_args(["--handshakes", str(args.handshakes), "--hs-parallel", str(args.hs_parallel)]
                               + (["--pin"] if args.pin else []))
    bench = Bench(tool)
    bench.out_dir.mkdir(parents=True, exist_ok=True)
    subjects = ["plain"] + [f"{label}:{mode}" for label in args.engines for mode in args.mode_list]
    order_random = random.Random(args.seed)
    rounds: list[dict[str, dict[str, float]]] = []
    dc = start_module("fakedc", "bench.fakedc", ["--port", str(DC_PORT), "--mask-port", str(MASK_PORT)],
                      copies=tool.dc_workers)
    loadtool.harness.pin(dc.pids, bench.load_cpus)
    try:
        for number in range(args.rounds):
            order = subjects[:]
            order_random.shuffle(order)
            one: dict[str, dict[str, float]] = {}
            for subject in order:
                label, _, mode = subject.partition(":")
                tool.engine_cmd = args.engines.get(label, DEFAULT_ENGINE)
                name = "plain" if subject == "plain" else f"engine-{mode}"
                svc = bench.start_subject(name)
                try:
                    one[subject] = bench.handshakes(name, svc, args.handshakes)
                finally:
                    if svc is not None:
                        svc.stop()
            rounds.append(one)
            print(f"round {number + 1}/{args.rounds}: " + ", ".join(
                f"{s} {one[s]['cpu_ms_per_hs']:.3f}" for s in subjects), file=sys.stderr, flush=True)
    finally:
        dc.stop()
        bench.close()
        if rounds:
            print(table(rounds, subjects))
        if args.out and rounds:
            with open(args.out, "w") as f:
                json.dump({"args": {k: v for k, v in vars(args).items()}, "date": time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": rounds}, f, indent=1, default=str)
    return 0


def table(rounds: list[dict[str, dict[str, float]]], subjects: list[str]) -> str:
    """Per subject: CPU ms per handshake (median), and its per-round ratio to the plain relay: median and
    the quartiles; handshakes/s likewise."""
    lines = ["| subject | CPU ms/hs | ratio to plain: median | quartiles | hs/s ratio | errors |",
             "|---|---|---|---|---|---|"]
    for subject in subjects:
        cpu = [r[subject]["cpu_ms_per_hs"] for r in rounds if subject in r]
        ratios = [r[subject]["cpu_ms_per_hs"] / r["plain"]["cpu_ms_per_hs"] for r in rounds
                  if subject in r and r["plain"]["cpu_ms_per_hs"] > 0]
        rates = [r[subject]["per_s"] / r["plain"]["per_s"] for r in rounds if subject in r and r["plain"]["per_s"]]
        errors = sum(int(r[subject]["errors"]) for r in rounds if subject in r)
        lines.append(f"| {subject} | {statistics.median(cpu):.3f} | {statistics.median(ratios):.3f}x | "
                     f"{_quartiles(ratios)} | {statistics.median(rates):.2f}x | {errors} |")
    return "\n".join(lines)


def _quartiles(values: list[float]) -> str:
    if len(values) < 4:
        return "—"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.3f} to {q3:.3f}"


if __name__ == "__main__":
    sys.exit(main())
