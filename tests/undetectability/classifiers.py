"""Capture loopback traffic with tcpdump and read it back with two traffic classifiers from Debian: nDPI's
ndpiReader (libndpi-bin) and Wireshark's tshark. Only parsing and process handling lives here; what the
proxy's traffic must look like is in test_classifiers.py."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = ("tcpdump", "tshark", "ndpiReader")
WAIT = 15.0

# tshark's heuristic dissectors on TCP that are off by default, by the protocol `tshark -G heuristic-decodes`
# names, mapped to the short name `--enable-heuristic` takes (the listing does not print it; these are the
# names Wireshark 4.0 registers). A tshark that lists one not here fails the test instead of silently leaving
# it off.
HEURISTICS_OFF_BY_DEFAULT = {
    "acn": "acn", "bfcp": "bfcp_tcp", "diameter": "diameter_tcp", "dnp3": "dnp3_tcp", "drbd": "drbd_tcp",
    "hdcp2": "hdcp2_tcp", "hislip": "hislip_tcp", "nano": "nano-tcp", "njack": "njack_tcp",
    "nstrace.rpc": "nsrpc", "rtmpt": "rtmpt_tcp", "someip": "someip_tcp_heur", "spdy": "spdy_tcp",
    "tcpros": "tcpros_tcp", "tpkt": "tpkt_tcp", "websocket": "websocket_tcp", "xml": "xml_tcp",
}  # fmt: skip


def missing_tools() -> str | None:
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"needs {', '.join(absent)} (scripts/install-test-deps: tcpdump, tshark, libndpi-bin)" if absent else None


def versions() -> dict[str, str]:
    """The first line each tool prints about its version, for failure messages and the docs."""
    tshark = subprocess.run(["tshark", "-v"], capture_output=True, text=True, timeout=WAIT).stdout
    ndpi = subprocess.run(["ndpiReader", "-h"], capture_output=True, text=True, timeout=WAIT).stdout
    return {"tshark": tshark.splitlines()[0], "ndpiReader": ndpi.strip().splitlines()[0]}


@contextmanager
def capture(pcap: Path, ports: tuple[int, ...], interface: str = "lo") -> Iterator[Path]:
    """tcpdump on `interface` (loopback) for TCP on `ports`, written to `pcap` until the block ends. `-Z root`
    keeps root's rights so it can write into the test's temp dir; `--immediate-mode` hands each packet over at
    once (by default libpcap holds them in blocks for up to a second, and SIGINT loses those); `-B` gives the
    kernel 64 MiB of buffer so the bulk sessions' 64 KiB loopback segments are not dropped."""
    bpf = " or ".join(f"tcp port {port}" for port in ports)
    command = ["tcpdump", "-i", interface, "-n", "--immediate-mode", "-U", "-B", "65536", "-Z", "root",
               "-w", str(pcap), bpf]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        started = proc.stderr.readline()  # "listening on lo, ..." once the socket is bound
        assert "listening on" in started, f"tcpdump did not start: {started}"
        yield pcap
    finally:
        _settle(pcap)
        proc.send_signal(signal.SIGINT)
        try:
            _out, tail = proc.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=WAIT)
            raise
    dropped = re.search(r"(\d+) packets dropped by kernel", tail)
    assert dropped is not None and dropped.group(1) == "0", f"tcpdump lost packets, the classifiers would guess: {tail}"


def _settle(pcap: Path, quiet: float = 0.3, limit: float = 5.0) -> None:
    """Wait until tcpdump has written what the kernel queued for it (`-U` writes each packet as it reads it):
    the file has not grown for `quiet` seconds, or `limit`."""
    deadline = time.monotonic() + limit
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = pcap.stat().st_size if pcap.exists() else 0
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


Endpoint = tuple[str, int]
FlowKey = tuple[Endpoint, Endpoint]  # (client, server)


@dataclass
class NdpiFlow:
    """One TCP flow as ndpiReader reports it (its `-v 2` flow lines)."""

    client: Endpoint
    server: Endpoint
    protocol: str  # "TLS", "Unknown", "Telegram", ...
    confidence: str  # "DPI", "Match by port", "Unknown", ...
    sni: str | None
    risks: frozenset[str]
    tls_version: str | None
    ja3s: str | None
    line: str


_NDPI_FLOW = re.compile(r"^\s*\d+\s+TCP ([\d.]+):(\d+) <-> ([\d.]+):(\d+) (.*)$")
_NDPI_FIELD = re.compile(r"\[([^\[\]]*)\]")


def ndpi_flows(pcap: Path, server_ports: tuple[int, ...]) -> dict[FlowKey, NdpiFlow]:
    """Every TCP flow of `pcap` as nDPI classifies it (DPI first, then its guess by port, as by default)."""
    result = subprocess.run(["ndpiReader", "-i", str(pcap), "-v", "2"], capture_output=True, text=True,
                            timeout=WAIT * 2)
    assert result.returncode == 0, result.stderr
    flows: dict[FlowKey, NdpiFlow] = {}
    for line in result.stdout.splitlines():
        match = _NDPI_FLOW.match(line)
        if match is None:
            continue
        a: Endpoint = (match.group(1), int(match.group(2)))
        b: Endpoint = (match.group(3), int(match.group(4)))
        client, server = (b, a) if a[1] in server_ports else (a, b)
        fields = _NDPI_FIELD.findall(match.group(5))
        named = {f.split(": ", 1)[0]: f.split(": ", 1)[1] for f in fields if ": " in f}
        risk = named.get("Risk", "")
        flows[(client, server)] = NdpiFlow(
            client=client,
            server=server,
            protocol=named["proto"].split("/", 1)[1],
            confidence=named["Confidence"],
            sni=named.get("Hostname/SNI"),
            risks=frozenset(r.strip() for r in risk.split("**") if r.strip()),
            tls_version=next((f for f in fields if f.startswith("TLSv")), None),
            ja3s=named.get("JA3S"),
            line=line.strip(),
        )
    return flows


@dataclass
class TsharkFlow:
    """One TCP flow as tshark dissects it: which protocols it found above TCP, and the TLS fields."""

    client: Endpoint
    server: Endpoint
    payload: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})  # stream bytes (sent once)
    protocols: set[str] = field(default_factory=set)  # every layer above tcp in any frame
    first_layers: set[str] = field(default_factory=set)  # the layer right above tcp, in frames that have one
    tls_record_bytes: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})  # 5 + length each
    handshake_types: dict[str, list[int]] = field(default_factory=lambda: {"up": [], "down": []})
    record_versions: dict[str, list[int]] = field(default_factory=lambda: {"up": [], "down": []})
    content_types: dict[str, list[int]] = field(default_factory=lambda: {"up": [], "down": []})
    sni: list[str] = field(default_factory=list)
    offered_extensions: list[int] = field(default_factory=list)
    offered_ciphers: list[str] = field(default_factory=list)
    offered_groups: list[int] = field(default_factory=list)
    offered_shares: list[int] = field(default_factory=list)  # the groups the client sent a key share for
    chosen_cipher: list[str] = field(default_factory=list)
    chosen_share: list[int] = field(default_factory=list)
    chosen_version: list[str] = field(default_factory=list)


_TSHARK_FIELDS = (
    "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tcp.seq", "tcp.len", "frame.protocols", "tls.record.length",
    "tls.handshake.type", "tls.record.version", "tls.record.content_type", "tls.record.opaque_type",
    "tls.handshake.extensions_server_name",
    "tls.handshake.extension.type", "tls.handshake.ciphersuite", "tls.handshake.extensions_supported_group",
    "tls.handshake.extensions_key_share_group", "tls.handshake.extensions.supported_version",
)  # fmt: skip


def tshark_base(all_heuristics: bool) -> list[str]:
    # Out-of-order reassembly: the capture itself may hold a loopback segment before the one it follows (the
    # kernel hands large segments to the packet socket from either CPU); without it, tshark stops reading
    # that direction's records there, as if the stream were not TLS.
    command = ["tshark", "-n", "-o", "tcp.reassemble_out_of_order:TRUE"]
    if all_heuristics:
        for name in HEURISTICS_OFF_BY_DEFAULT.values():
            command += ["--enable-heuristic", name]
    return command


def tcp_heuristics() -> dict[str, bool]:
    """This tshark's heuristic dissectors on TCP: protocol name → on by default."""
    listing = subprocess.run(["tshark", "-G", "heuristic-decodes"], capture_output=True, text=True,
                             timeout=WAIT).stdout
    rows = [line.split("\t") for line in listing.splitlines()]
    return {row[1]: row[2] == "T" for row in rows if len(row) == 3 and row[0] == "tcp"}


def tshark_flows(pcap: Path, server_ports: tuple[int, ...], *, all_heuristics: bool) -> dict[FlowKey, TsharkFlow]:
    """Dissect `pcap` as tshark does by default (dissectors by port, then the heuristics that are on), or with
    every TCP heuristic dissector switched on as well."""
    command = [*tshark_base(all_heuristics), "-r", str(pcap), "-T", "fields", "-E", "separator=\t",
               "-E", "occurrence=a", "-E", "aggregator=,"]
    for name in _TSHARK_FIELDS:
        command += ["-e", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=WAIT * 2)
    assert result.returncode == 0, result.stderr
    flows: dict[FlowKey, TsharkFlow] = {}
    for line in result.stdout.splitlines():
        values = dict(zip(_TSHARK_FIELDS, line.split("\t"), strict=True))
        source: Endpoint = (values["ip.src"], int(values["tcp.srcport"]))
        destination: Endpoint = (values["ip.dst"], int(values["tcp.dstport"]))
        up = destination[1] in server_ports
        client, server = (source, destination) if up else (destination, source)
        direction = "up" if up else "down"
        flow = flows.setdefault((client, server), TsharkFlow(client, server))
        # the stream's length from relative sequence numbers (a segment sent again counts once; a FIN takes one)
        if int(values["tcp.len"]):
            end = int(values["tcp.seq"]) - 1 + int(values["tcp.len"])
            flow.payload[direction] = max(flow.payload[direction], end)
        layers = values["frame.protocols"].split(":")
        above = layers[layers.index("tcp") + 1:]
        flow.protocols.update(above)
        flow.first_layers.update(above[:1])
        flow.tls_record_bytes[direction] += sum(5 + int(n) for n in _list(values["tls.record.length"]))
        flow.handshake_types[direction] += [int(n) for n in _list(values["tls.handshake.type"])]
        flow.record_versions[direction] += [int(n, 0) for n in _list(values["tls.record.version"])]
        # TLS 1.3's encrypted records carry their type as opaque_type (always 23), the plain ones content_type
        types = _list(values["tls.record.content_type"]) + _list(values["tls.record.opaque_type"])
        flow.content_types[direction] += [int(n) for n in types]
        flow.sni += _list(values["tls.handshake.extensions_server_name"])
        if up:
            flow.offered_extensions += [int(n) for n in _list(values["tls.handshake.extension.type"])]
            flow.offered_ciphers += _list(values["tls.handshake.ciphersuite"])
            flow.offered_groups += [int(n, 0) for n in _list(values["tls.handshake.extensions_supported_group"])]
            flow.offered_shares += [int(n, 0) for n in _list(values["tls.handshake.extensions_key_share_group"])]
        else:
            flow.chosen_cipher += _list(values["tls.handshake.ciphersuite"])
            flow.chosen_share += [int(n, 0) for n in _list(values["tls.handshake.extensions_key_share_group"])]
            flow.chosen_version += _list(values["tls.handshake.extensions.supported_version"])
    return flows


def _list(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


_EXPERT_ROW = re.compile(r"^\s+(\d+)\s+(\S+)\s+(\S+)\s+(.*)$")


def tshark_expert(pcap: Path) -> dict[str, set[str]]:
    """tshark's expert analysis (`-z expert`): protocol → the summaries it raised, any severity."""
    result = subprocess.run([*tshark_base(False), "-q", "-r", str(pcap), "-z", "expert"], capture_output=True,
                            text=True, timeout=WAIT * 2)
    assert result.returncode == 0, result.stderr
    found: dict[str, set[str]] = defaultdict(set)
    for line in result.stdout.splitlines():
        match = _EXPERT_ROW.match(line)
        if match:
            found[match.group(3)].add(match.group(4).strip())
    return dict(found)


def protocol_names() -> set[str]:
    """Every protocol this tshark can dissect, by its filter name (`tshark -G protocols`)."""
    listing = subprocess.run(["tshark", "-G", "protocols"], capture_output=True, text=True, timeout=WAIT).stdout
    return {row.split("\t")[2] for row in listing.splitlines() if row.count("\t") >= 2}
