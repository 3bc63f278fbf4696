"""The load tool: inside a private network namespace, start a fake DC, the baselines and the proxy under
test, drive them with the same client load, and report proxy CPU per GB and per handshake, throughput,
added latency and memory per idle session, as a table and as JSON (see docs/benchmarks.md). With
--relay, the engine is measured a second time on the middle-proxy (relay) path, behind a fake relay."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import harness, netns, report, wire
from mtproxy.testkit.relayconfig import write_relay_files

DC_HOST, DC_PORT, MASK_PORT, PLAIN_PORT, PROXY_PORT, RELAY_PORT = "127.0.0.1", 9443, 9444, 7443, 8443, 9445
STATS_URL = "http://127.0.0.1:8888/stats.json"  # the engine's default stats port, inside the namespace
PER_SUBJECT_PHASES = ("bulk1", "bulkN", "hs", "lat")
DOMAIN = "example.com"
DEFAULT_ENGINE = (
    "{python} -m mtproxy.cli.main run -H {port} {secret_args} --dc-override *={dc_host}:{dc_port} "
    "--mask {mask_host}:{mask_port} --workers {workers} {relay_args}"
)
MODES = ("classic", "dd", "ee")
# The relay path's subjects: the same engine and mode as `engine-<mode>`, its clients through a fake relay.
MIDDLE = "middle-"
RELAY_SECRET_SIZE = 128  # bytes of proxy-secret, as getProxySecret serves it


def subject_kind(subject: str) -> str:
    """The client mode of an engine subject: engine-ee and middle-ee are both `ee`."""
    return subject.split("-", 1)[1]


def secret_text(kind: str, key: bytes) -> str:
    secret = wire.secret_for(kind, key, DOMAIN)
    assert secret is not None
    return secret.to_hex()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out_dir = Path(args.out)
        self.log = self.out_dir / "servers.log"
        self.key = os.urandom(16)
        # --pin: the subject gets CPU 0 to itself, the fake DC and the load clients share the others
        cpus = sorted(os.sched_getaffinity(0))
        pinned = args.pin and len(cpus) > 1
        self.subject_cpus: set[int] | None = {cpus[0]} if pinned else None
        self.load_cpus: set[int] | None = set(cpus[1:]) if pinned else None
        # the fake relay of the middle-* subject being measured (its CPU is sampled apart from the subject's)
        self.relay: harness.Service | None = None
        self._relay_dir = tempfile.TemporaryDirectory(prefix="bench-relay-")
        self.relay_files = write_relay_files(Path(self._relay_dir.name), os.urandom(RELAY_SECRET_SIZE),
                                             {wire.DC_ID: [(DC_HOST, RELAY_PORT)]}, default_dc=wire.DC_ID)

    def close(self) -> None:
        self._relay_dir.cleanup()

    # ---- subjects -------------------------------------------------------------------------------
    def start_subject(self, subject: str, workers: int = 1, extra_keys: int = 0,
                      extra_args: tuple[str, ...] = ()) -> harness.Service | None:
        """Start what clients of `subject` talk to; None for the direct path (no proxy)."""
        if subject == "direct":
            return None
        if subject == "plain":
            return harness.start_module(
                "plain",
                "bench.plainrelay",
                ["--port", str(PLAIN_PORT), "--upstream", f"{DC_HOST}:{DC_PORT}"],
                copies=workers,
            )
        kind = subject_kind(subject)
        keys = [os.urandom(16) for _ in range(extra_keys)] + [self.key]
        secrets = [secret_text(kind, k) for k in keys]
        values = {
            "python": sys.executable,
            "port": str(PROXY_PORT),
            "secret": secrets[-1],
            "dc_host": DC_HOST,
            "dc_port": str(DC_PORT),
            "mask_host": DC_HOST,
            "mask_port": str(MASK_PORT),
            "workers": str(workers),
            "domain": DOMAIN,
        }
        middle = subject.startswith(MIDDLE)
        # the official command line's way to the relays, which our engine follows too (docs/engine.md)
        relay_args = ["--aes-pwd", str(self.relay_files.secret), str(self.relay_files.config)] if middle else []
        argv = harness.expand_template(
            self.args.engine_cmd, values,
            {"secret_args": [a for s in secrets for a in ("-S", s)], "relay_args": relay_args},
        ) + list(extra_args)
        with open(self.log, "ab") as f:
            f.write(f"\n=== {subject} workers={workers} secrets={len(secrets)}\n".encode())
        svc = harness.start_command(subject, argv, DC_HOST, PROXY_PORT, self.log)
        if middle:
            assert self.relay is not None
            try:  # before its first relay link is up, the engine would send its clients direct
                harness.wait_line(self.relay.procs[0], "linked", harness.READY_TIMEOUT)
            except BaseException:
                svc.stop()
                raise
        return svc

    def start_relay(self) -> harness.Service:
        self.relay = harness.start_module(
            "middlerelay", "bench.middlerelay",
            ["--port", str(RELAY_PORT), "--dc", f"{DC_HOST}:{DC_PORT}", "--secret-file", str(self.relay_files.secret)],
            questions=True,
        )
        harness.pin(self.relay.pids, self.load_cpus)
        return self.relay

    def stop_relay(self) -> dict[str, float]:
        """Stop the fake relay; what it carried (numbers only; its errors go to stderr and servers.log)."""
        relay, self.relay = self.relay, None
        if relay is None:
            return {}
        proc = relay.procs[0]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        relay.stop()
        lines = [ln for ln in proc.stdout.read().decode().splitlines() if ln.startswith("{")]
        if not lines:
            return {}
        carried: dict[str, Any] = json.loads(lines[-1])
        errors = carried.pop("errors")
        if errors:
            text = "".join(f"  fake relay: {e}\n" for e in errors)
            print(text, end="", file=sys.stderr)
            with open(self.log, "a") as f:
                f.write(text)
        return {**{k: float(v) for k, v in carried.items()}, "errors": float(len(errors))}

    def settle_relay(self) -> None:
        """Wait (at most --relay-settle seconds) until the engine closed every client's conn id at the fake
        relay: the closes are part of the phase's cost."""
        relay = self.relay
        assert relay is not None
        proc = relay.procs[0]
        assert proc.stdin is not None
        deadline = time.monotonic() + self.args.relay_settle
        while True:
            proc.stdin.write(b"legs\n")
            proc.stdin.flush()
            legs = harness.read_event(proc, "legs", 10)["legs"]
            if not legs:
                return
            if time.monotonic() > deadline:
                print(f"  fake relay: {legs} conn ids still open after {self.args.relay_settle:.0f} s",
                      file=sys.stderr)
                return
            time.sleep(0.1)

    def target(self, subject: str) -> dict[str, Any]:
        if subject == "direct":
            return {"kind": "raw", "host": DC_HOST, "port": DC_PORT}
        if subject == "plain":
            return {"kind": "raw", "host": DC_HOST, "port": PLAIN_PORT}
        return {
            "kind": subject_kind(subject),
            "host": DC_HOST,
            "port": PROXY_PORT,
            "secret_key": self.key.hex(),
            "domain": DOMAIN,
            # the relay path forwards packets: its clients speak them (bench/wire.py)
            **({"packet_size": self.args.packet_size} if subject.startswith(MIDDLE) else {}),
        }

    # ---- phases ---------------------------------------------------------------------------------
    def phase(
        self, subject: str, svc: harness.Service | None, job: dict[str, Any], workers: int
    ) -> harness.PhaseResult:
        job = {**self.target(subject), **job}
        pids = svc.pids if svc is not None else []
        harness.pin(pids, self.subject_cpus)  # again: a worker may have been (re)started since
        helpers = self.relay.pids if self.relay is not None else []
        # latency's few sessions cost nothing worth waiting for; the subject is stopped after it
        settle = self.settle_relay if self.relay is not None and job["phase"] != "latency" else None
        res = harness.run_phase(job, workers, pids, self.args.phase_timeout, self.load_cpus, helpers, settle)
        errors: dict[str, int] = {}
        for r in res.results + res.ready:
            for k, v in r.get("errors", {}).items():
                errors[k] = errors.get(k, 0) + v
        if errors:
            print(f"  {subject} {job['phase']}: client errors {errors}", file=sys.stderr)
        return res

    def bulk(
        self, subject: str, svc: harness.Service | None, direction: str, conns: int, per: int, workers: int
    ) -> dict[str, float]:
        res = self.phase(
            subject,
            svc,
            {
                "phase": "bulk",
                "direction": direction,
                "conns": conns,
                "bytes_per_conn": per,
                "timeout": self.args.phase_timeout,
            },
            workers,
        )
        total = sum(r["bytes"] for r in res.results)
        span = max(r["end"] for r in res.results) - min(r["start"] for r in res.results)
        ok = sum(r["ok"] for r in res.results)
        relay = {"relay_cpu": res.helper_cpu, "settle_s": res.settle_wall,
                 "relay_cpu_s_per_GB": res.helper_cpu / (total / 1e9) if total else float("nan")}
        return {
            **(relay if self.relay is not None else {}),
            "bytes": total,
            "seconds": span,
            "MBps": total / span / 1e6 if span > 0 else 0.0,
            "cpu": res.cpu,
            "cpu_s_per_GB": res.cpu / (total / 1e9) if total else float("nan"),
            # the load clients share the box: when they are busy, throughput says more about them
            "client_cpu_s_per_GB": res.client_cpu / (total / 1e9) if total else float("nan"),
            "ok": ok,
            "conns": conns,
        }

    def handshakes(
        self,
        subject: str,
        svc: harness.Service | None,
        total: int,
        ips: int = 8,
        ip_base: int = 0,
        parallel: int | None = None,
        duration: float | None = None,
    ) -> dict[str, float]:
        job = {
            "phase": "handshake",
            "total": total,
            "parallel": parallel or self.args.hs_parallel,
            "ips": ips,
            "ip_base": ip_base,
            "duration": duration,
        }
        res = self.phase(subject, svc, job, self.args.client_workers)
        ok = sum(r["ok"] for r in res.results)
        span = max(r["end"] for r in res.results) - min(r["start"] for r in res.results)
        durations = sorted(d for r in res.results for d in r["durations"])
        relay = {"relay_cpu_ms_per_hs": res.helper_cpu * 1000 / ok if ok else float("nan"), "settle_s": res.settle_wall}
        return {
            **(relay if self.relay is not None else {}),
            "ok": ok,
            "per_s": ok / span if span else 0.0,
            "cpu": res.cpu,
            "cpu_ms_per_hs": res.cpu * 1000 / ok if ok else float("nan"),
            "cpu_s_per_1k": res.cpu * 1000 / ok if ok else float("nan"),
            "p50_ms": report.percentile(durations, 50) * 1000,
            "p99_ms": report.percentile(durations, 99) * 1000,
            "errors": sum(v for r in res.results for v in r.get("errors", {}).values()),
            "engine_cpu_share": res.cpu / span if span else 0.0,
        }

    def latency(self, subject: str, svc: harness.Service | None) -> dict[str, float]:
        res = self.phase(
            subject, svc, {"phase": "latency", "conns": self.args.lat_conns, "pings": self.args.pings, "size": 64}, 1
        )
        rtts = sorted(x for r in res.results for x in r["rtts"])
        return {
            "p50_ms": report.percentile(rtts, 50) * 1000,
            "p99_ms": report.percentile(rtts, 99) * 1000,
            "n": len(rtts),
        }

    def idle(self, subject: str, sessions: int) -> dict[str, float]:
        """Memory per idle established session: the proxy with enough workers for the descriptors."""
        per_worker_fds = self.args.nofile_per_process - 200
        workers = max(1, -(-2 * sessions // per_worker_fds)) if subject != "direct" else 0
        svc = self.start_subject(subject, workers=max(1, workers))
        try:
            assert svc is not None
            time.sleep(0.5)
            import bench.procstat as procstat

            before = procstat.memory(svc.pids)
            clients = max(2, -(-sessions // 12000))
            res = self.phase(subject, svc, {"phase": "idle", "conns": sessions, "parallel": 100, "ips": 8}, clients)
            opened = sum(r["sessions"] for r in res.ready)
            alive = sum(r["alive"] for r in res.results)
            assert res.memory is not None
            return {
                "sessions": opened,
                "alive": alive,
                "workers": workers,
                "rss_MB": res.memory.rss / 1e6,
                "pss_MB": res.memory.pss / 1e6,
                "base_pss_MB": before.pss / 1e6,
                "KB_per_session_pss": (res.memory.pss - before.pss) / max(1, opened) / 1024,
                "KB_per_session_rss": (res.memory.rss - before.rss) / max(1, opened) / 1024,
                "cpu_ms_per_open": res.cpu_setup * 1000 / max(1, opened),
            }
        finally:
            if svc is not None:
                svc.stop()

    def run_subject(self, subject: str) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {}
        if subject.startswith(MIDDLE):
            self.start_relay()
        try:
            svc = self.start_subject(subject)
        except BaseException:
            self.stop_relay()
            raise
        try:
            mb = 1_000_000
            phases = a.phases.split(",")
            if "bulk1" in phases:
                out["up1"] = self.bulk(subject, svc, "up", 1, a.one_mb * mb, 1)
                out["down1"] = self.bulk(subject, svc, "down", 1, a.one_mb * mb, 1)
            if a.many and "bulkN" in phases:
                out["upN"] = self.bulk(subject, svc, "up", a.many, a.many_mb * mb // a.many, a.client_workers)
                out["downN"] = self.bulk(subject, svc, "down", a.many, a.many_mb * mb // a.many, a.client_workers)
            if "hs" in phases:
                out["hs"] = self.handshakes(subject, svc, a.handshakes)
            if "lat" in phases:
                out["lat"] = self.latency(subject, svc)
            if svc is not None:
                import bench.procstat as procstat

                out["rss_MB"] = procstat.memory(svc.pids).rss / 1e6
        finally:
            if svc is not None:
                svc.stop()
            if subject.startswith(MIDDLE):
                out["relay"] = self.stop_relay()
        return out


def machine() -> dict[str, str]:
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.loadtool", description=__doc__)
    p.add_argument("--modes", default="classic,dd,ee", help="engine modes to measure (classic,dd,ee)")
    p.add_argument("--no-engine", action="store_true", help="baselines only (plain relay, direct path)")
    p.add_argument("--engine-cmd", default=DEFAULT_ENGINE, help="command template for the proxy under test")
    p.add_argument("--relay", action="store_true",
                   help="also measure each engine mode on the middle-proxy path (subjects middle-<mode>), its "
                        "clients' packets through a fake relay in front of the fake DC; the template needs "
                        "{relay_args}")
    p.add_argument("--relay-settle", type=float, default=30.0,
                   help="relay path: seconds to wait after a phase for the engine to close its clients' conn ids "
                        "(counted in the phase's CPU)")
    p.add_argument("--packet-size", type=int, default=512 * 1024,
                   help="bytes per bulk packet on the relay path (TDLib's parts: 512 KiB, smaller files 64 KiB)")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs; medians are reported")
    p.add_argument("--phases", default="bulk1,bulkN,hs,lat",
                   help="which per-subject phases to run; `flood` (not in the default) adds the garbage-flood "
                        "stage, and alone runs only that")
    p.add_argument("--pin", action="store_true",
                   help="give the subject CPU 0 to itself and the fake DC and load clients the other CPUs "
                        "(steadier numbers on a small machine)")
    p.add_argument("--one-mb", type=int, default=512, help="MB per direction over one connection")
    p.add_argument("--many", type=int, default=1000, help="concurrent connections for the bulk phase (0: skip)")
    p.add_argument("--many-mb", type=int, default=1000, help="MB per direction over the concurrent connections")
    p.add_argument("--handshakes", type=int, default=3000)
    p.add_argument("--hs-parallel", type=int, default=64)
    p.add_argument("--lat-conns", type=int, default=4)
    p.add_argument("--pings", type=int, default=500)
    p.add_argument("--idle", default="10000,50000", help="idle session counts for the memory phase ('': skip)")
    p.add_argument("--idle-modes", default="plain,classic,ee")
    p.add_argument(
        "--max-memory-share",
        type=float,
        default=0.4,
        help="skip an idle step whose estimated memory exceeds this share of MemAvailable",
    )
    p.add_argument("--secrets", type=int, default=10000, help="configured secrets for the lookup phase (0: skip)")
    p.add_argument("--secrets-modes", default="classic,ee")
    p.add_argument("--new-clients", type=int, default=200, help="handshakes from fresh addresses (no hint)")
    p.add_argument("--flood-secrets", type=int, default=10000, help="configured secrets for the flood stage")
    p.add_argument("--flood-modes", default="classic", help="engine modes for the flood stage (classic,dd,ee)")
    p.add_argument("--flood-rate", type=float, default=50.0, help="garbage connections per second (no hint)")
    p.add_argument("--flood-duration", type=float, default=10.0,
                   help="seconds of returning-client handshakes without, then with, the flood")
    p.add_argument("--flood-budgets", default="default",
                   help="engine --scan-budget values to compare, comma separated (`default`: the engine's own)")
    p.add_argument("--client-workers", type=int, default=2)
    p.add_argument("--dc-workers", type=int, default=4)
    p.add_argument("--phase-timeout", type=float, default=300.0)
    p.add_argument("--out", default=str(harness.REPO / "bench" / "results"))
    p.add_argument("--smoke", action="store_true", help="minute numbers: checks the tool end to end")
    args = p.parse_args(argv)
    if args.smoke:
        args.runs, args.one_mb, args.many, args.many_mb = 1, 1, 2, 2
        args.handshakes, args.hs_parallel, args.lat_conns, args.pings = 20, 4, 1, 10
        args.idle, args.secrets, args.client_workers, args.dc_workers = "", 0, 1, 1
        args.flood_secrets, args.flood_rate, args.flood_duration = 200, 20.0, 1.5
    if args.relay and "{relay_args}" not in args.engine_cmd.split():
        p.error("--relay: the engine template has no {relay_args} word (where the relay files go)")
    try:
        wire.packet_sizes(args.packet_size, args.packet_size)
    except ValueError as exc:
        p.error(f"--packet-size: {exc}")
    import resource

    args.nofile_per_process = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return args


def main(argv: list[str] | None = None) -> int:
    netns.ensure_isolated("bench.loadtool")
    # A plain SIGTERM would skip the `finally` blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    netns.tune_namespace()
    args = parse_args(argv)
    bench = Bench(args)
    bench.out_dir.mkdir(parents=True, exist_ok=True)
    modes = [] if args.no_engine else [m for m in args.modes.split(",") if m]
    subjects = ["plain"] + [f"engine-{m}" for m in modes] + ([f"{MIDDLE}{m}" for m in modes] if args.relay else [])
    dc = harness.start_module(
        "fakedc", "bench.fakedc", ["--port", str(DC_PORT), "--mask-port", str(MASK_PORT)], copies=args.dc_workers
    )
    harness.pin(dc.pids, bench.load_cpus)
    runs: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    try:
        measure(bench, subjects, runs, extra)
    finally:
        dc.stop()
        bench.close()
        # Whatever was measured is written, also when a stage failed or the run was interrupted.
        summary = report.summarize(runs)
        doc = {"machine": machine(), "args": dict(vars(args)), "summary": summary, "extra": extra, "runs": runs}
        path = bench.out_dir / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        path.write_text(json.dumps(doc, indent=1, default=str))
        print(report.table(doc))
        print(f"\nJSON: {path}")
    return 0


def measure(bench: Bench, subjects: list[str], runs: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    """The interleaved runs, then the secrets and idle stages; results are appended as they come."""
    args = bench.args
    phases = args.phases.split(",")
    per_subject = any(p in PER_SUBJECT_PHASES for p in phases)
    if not per_subject and "flood" in phases:  # `--phases flood`: that stage alone
        if not args.no_engine:
            extra["flood"] = flood_stage(bench)
        return
    # `--phases ''`: no interleaved runs, only the secrets and idle stages
    for run in range(args.runs if per_subject else 0):
        one: dict[str, Any] = {"direct": {"lat": bench.latency("direct", None)}}
        one["direct"].update(
            up1=bench.bulk("direct", None, "up", 1, args.one_mb * 1_000_000, 1),
            down1=bench.bulk("direct", None, "down", 1, args.one_mb * 1_000_000, 1),
        )
        # Interleave: each run visits every subject once, so drift on the shared machine hits all alike.
        order = subjects if run % 2 == 0 else subjects[::-1]
        for subject in order:
            print(f"run {run + 1}/{args.runs}: {subject}", file=sys.stderr, flush=True)
            one[subject] = bench.run_subject(subject)
        runs.append(one)
    if not args.no_engine and args.secrets:
        extra["secrets"] = {}
        for mode in args.secrets_modes.split(","):
            if mode in args.modes.split(","):
                extra["secrets"][mode] = secrets_phase(bench, mode)
    if not args.no_engine and "flood" in phases:
        extra["flood"] = flood_stage(bench)
    if args.idle:
        extra["idle"] = {}
        for subject in args.idle_modes.split(","):
            name = subject if subject in ("plain",) else f"engine-{subject}"
            if name != "plain" and (args.no_engine or subject not in args.modes.split(",")):
                continue
            for n in sorted(int(x) for x in args.idle.split(",")):
                print(f"idle: {name} {n} sessions", file=sys.stderr, flush=True)
                need = _memory_estimate(extra["idle"].get(name, {}), n)
                if need is not None and need > args.max_memory_share * _available_memory():
                    # The machine is shared: do not push other people's processes into the OOM killer.
                    extra["idle"].setdefault(name, {})[str(n)] = {
                        "error": f"skipped: would need about {need / 1e9:.1f} GB "
                        f"(more than {args.max_memory_share:.0%} of available memory)"
                    }
                    continue
                try:
                    extra["idle"].setdefault(name, {})[str(n)] = bench.idle(name, n)
                except harness.BenchError as exc:
                    extra["idle"].setdefault(name, {})[str(n)] = {"error": str(exc)}


def _available_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _memory_estimate(measured: dict[str, Any], sessions: int) -> float | None:
    """Bytes `sessions` idle sessions would take, from the largest count already measured."""
    done = [(int(k), v) for k, v in measured.items() if "KB_per_session_pss" in v]
    if not done:
        return None
    _, v = max(done)
    return float(v["KB_per_session_pss"]) * 1024 * sessions


def secrets_phase(bench: Bench, mode: str) -> dict[str, Any]:
    """Handshake cost with one configured secret and with many, for returning clients (same source
    addresses, the last secret in the list), and for new clients (every handshake from an address the
    proxy has not seen, so no hint). Interleaved over the runs; medians."""
    many = str(bench.args.secrets)
    out: dict[str, list[dict[str, float]]] = {"1": [], many: [], f"{many} new clients": []}
    for _ in range(bench.args.runs):
        for extra_keys in (0, bench.args.secrets - 1):
            subject = f"engine-{mode}"
            svc = bench.start_subject(subject, extra_keys=extra_keys)
            try:
                bench.handshakes(subject, svc, min(300, bench.args.handshakes))  # warm: clients "return"
                out[str(extra_keys + 1)].append(bench.handshakes(subject, svc, bench.args.handshakes))
                if extra_keys and bench.args.new_clients:
                    # One handshake per fresh source address (second octet 100+ is never used elsewhere).
                    n = bench.args.new_clients
                    per_worker = -(-n // bench.args.client_workers)
                    # Few at a time: a full scan takes ~0.1 s, and queued handshakes would hit the client timeout.
                    out[f"{many} new clients"].append(
                        bench.handshakes(subject, svc, n, ips=per_worker, ip_base=100, parallel=4)
                    )
            finally:
                if svc is not None:
                    svc.stop()
    return {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in out.items() if v}


def engine_stats() -> dict[str, Any] | None:
    """The engine's /stats.json, or None when the subject has no such page (another proxy)."""
    try:
        with urllib.request.urlopen(STATS_URL, timeout=5) as reply:
            doc: dict[str, Any] = json.loads(reply.read())
    except (OSError, ValueError):
        return None
    return doc


def _stats_moved(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    def figure(doc: dict[str, Any], key: str) -> int:
        rejects = doc.get("rejects", {})
        return int(rejects.get(key, 0)) if key in rejects else int(doc.get(key, 0))
    keys = ("scans", "scan-busy", "unknown-secret", "tls-bad-hmac", "handshake-timeout", "masked")
    return {k: figure(after, k) - figure(before, k) for k in keys}


class Background(threading.Thread):
    """A client phase (the garbage flood) running beside the measured one, from fresh source addresses."""

    def __init__(self, job: dict[str, Any], timeout: float, cpus: set[int] | None) -> None:
        super().__init__(daemon=True)
        self._job, self._timeout, self._cpus = job, timeout, cpus
        self.result: harness.PhaseResult | None = None
        self.start()

    def run(self) -> None:
        self.result = harness.run_phase(self._job, 1, [], self._timeout, self._cpus)

    def finish(self) -> harness.PhaseResult | None:
        self.join(self._timeout)
        return self.result


def flood_stage(bench: Bench) -> dict[str, Any]:
    """Returning clients' handshakes with `--flood-secrets` configured, for `--flood-duration` seconds without,
    then with `--flood-rate` garbage connections a second from fresh addresses (no hint: each costs a scan of
    every secret unless the engine sheds it). Per mode and per `--flood-budgets` value."""
    args = bench.args
    out: dict[str, Any] = {}
    for mode in [m for m in args.flood_modes.split(",") if m]:
        for budget in [b for b in args.flood_budgets.split(",") if b]:
            subject = f"engine-{mode}"
            flags = () if budget == "default" else ("--scan-budget", budget)
            print(f"flood: {subject} {args.flood_secrets} secrets, scan budget {budget}", file=sys.stderr, flush=True)
            svc = bench.start_subject(subject, extra_keys=args.flood_secrets - 1, extra_args=flags)
            try:
                returning = {"ips": 8, "parallel": 8}
                bench.handshakes(subject, svc, 100, **returning)  # their addresses now hint their secret
                quiet = bench.handshakes(subject, svc, 0, duration=args.flood_duration, **returning)
                before = engine_stats()
                job = {**bench.target(subject), "phase": "garbage", "rate": args.flood_rate,
                       "duration": args.flood_duration, "ips": 200, "ip_base": 150}
                flood = Background(job, args.phase_timeout, bench.load_cpus)
                try:
                    loud = bench.handshakes(subject, svc, 0, duration=args.flood_duration, **returning)
                finally:
                    res = flood.finish()
                ended = {k: sum(r.get(k, 0) for r in res.results) for k in
                         ("sent", "answered", "closed", "timeout", "failed")} if res else {}
                out[f"{mode} budget={budget}"] = {"without": quiet, "with": loud, "garbage": ended,
                                                  "engine": _stats_moved(before, engine_stats())}
            finally:
                if svc is not None:
                    svc.stop()
    return out


if __name__ == "__main__":
    sys.exit(main())
