"""Medians over interleaved runs, ratios against the plain relay, and the human table."""

from __future__ import annotations

import math
import statistics
from typing import Any


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def _flatten(subject: dict[str, Any], direct: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for phase, values in subject.items():
        if isinstance(values, dict):
            for k, v in values.items():
                flat[f"{phase}.{k}"] = float(v)
        else:
            flat[phase] = float(values)
    for n in ("1", "N"):
        up, down = subject.get(f"up{n}"), subject.get(f"down{n}")
        if up and down and up["bytes"] + down["bytes"]:
            flat[f"both{n}.cpu_s_per_GB"] = (up["cpu"] + down["cpu"]) / ((up["bytes"] + down["bytes"]) / 1e9)
            if "relay_cpu" in up and "relay_cpu" in down:  # the fake middle-proxy relay beside the subject
                flat[f"both{n}.relay_cpu_s_per_GB"] = (
                    (up["relay_cpu"] + down["relay_cpu"]) / ((up["bytes"] + down["bytes"]) / 1e9))
    if "lat" in subject and "lat" in direct:
        flat["lat.added_p50_ms"] = subject["lat"]["p50_ms"] - direct["lat"]["p50_ms"]
        flat["lat.added_p99_ms"] = subject["lat"]["p99_ms"] - direct["lat"]["p99_ms"]
    return flat


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per subject and metric, the median over runs (each run measured every subject once)."""
    per: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for subject, values in run.items():
            for k, v in _flatten(values, run.get("direct", {})).items():
                per.setdefault(subject, {}).setdefault(k, []).append(v)
    return {s: {k: statistics.median(v) for k, v in m.items()} for s, m in per.items()}


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}"


COLUMNS = [
    ("CPU s/GB 1c up", "up1.cpu_s_per_GB", 3),
    ("1c down", "down1.cpu_s_per_GB", 3),
    ("1c both", "both1.cpu_s_per_GB", 3),
    ("1000c both", "bothN.cpu_s_per_GB", 3),
    ("MB/s 1c up", "up1.MBps", 0),
    ("1c down", "down1.MBps", 0),
    ("1000c up", "upN.MBps", 0),
    ("1000c down", "downN.MBps", 0),
    ("hs/s", "hs.per_s", 0),
    ("CPU ms/hs", "hs.cpu_ms_per_hs", 3),
    ("+p50 ms", "lat.added_p50_ms", 3),
    ("+p99 ms", "lat.added_p99_ms", 3),
    ("RSS MB", "rss_MB", 1),
]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table(doc: dict[str, Any]) -> str:
    summary: dict[str, dict[str, float]] = doc["summary"]
    m = doc["machine"]
    parts = [
        f"machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, Python {m['python']}, {m['date']}",
        (f"medians of {doc['args']['runs']} interleaved runs; " if summary else "")
        + "CPU = user+sys of the proxy process tree"
        + ("; subject pinned to one CPU, fake DC and load clients to the others" if doc["args"].get("pin") else ""),
        "",
    ]
    subjects = list(summary)
    if subjects:  # none when only a stage ran (`--phases flood`)
        parts.append(
            _table(
                ["subject"] + [c[0] for c in COLUMNS],
                [[s] + [_fmt(summary[s].get(key), d) for _, key, d in COLUMNS] for s in subjects],
            )
        )
    plain = summary.get("plain")
    if plain:
        parts += ["", "ratios against the plain relay (CPU: lower is better; throughput: higher is better)"]
        ratio_cols = [c for c in COLUMNS if "cpu" in c[1] or "MBps" in c[1] or c[1] == "hs.per_s"]
        rows = []
        for s in subjects:
            if s in ("plain", "direct"):
                continue
            row = [s]
            for _, key, _d in ratio_cols:
                a, b = summary[s].get(key), plain.get(key)
                row.append(_fmt(a / b if a is not None and b else None, 2))
            rows.append(row)
        parts.append(_table(["subject"] + [c[0] for c in ratio_cols], rows))
    middle = [s for s in subjects if s.startswith("middle-") and "engine-" + s.split("-", 1)[1] in summary]
    if middle:
        parts += ["", "the relay path (middle-<mode>: the engine's clients through a fake middle-proxy relay) beside "
                      "direct mode (engine-<mode>): the engine's CPU, and the fake relay's own (not the engine's)"]
        rows = []
        for s in middle:
            on, off = summary[s], summary["engine-" + s.split("-", 1)[1]]
            row = [s.split("-", 1)[1]]
            for key in ("both1.cpu_s_per_GB", "bothN.cpu_s_per_GB", "hs.cpu_ms_per_hs"):
                a, b = on.get(key), off.get(key)
                row += [_fmt(b, 3), _fmt(a, 3), _fmt(a / b if a is not None and b else None, 2)]
            row += [_fmt(on.get("lat.added_p50_ms"), 3), _fmt(on.get("both1.relay_cpu_s_per_GB"), 3),
                    _fmt(on.get("hs.relay_cpu_ms_per_hs"), 3)]
            rows.append(row)
        header = ["mode", "CPU s/GB 1c both direct", "relay path", "ratio", "1000c both direct", "relay path", "ratio",
                  "CPU ms/hs direct", "relay path", "ratio", "relay path +p50 ms", "fake relay s/GB 1c",
                  "fake relay ms/hs"]
        parts.append(_table(header, rows))
    client_cols = [(c, f"{phase}.client_cpu_s_per_GB", 3) for c, phase in
                   (("1c up", "up1"), ("1c down", "down1"), ("1000c up", "upN"), ("1000c down", "downN"))]
    if any(summary[s].get(key) is not None for s in subjects for _, key, _d in client_cols):
        parts += ["", "the load clients' own CPU s/GB (they share the box: when they are busy, throughput "
                      "tells more about them than about the subject)"]
        parts.append(_table(["subject"] + [c[0] for c in client_cols],
                            [[s] + [_fmt(summary[s].get(key), d) for _, key, d in client_cols] for s in subjects]))
    extra = doc.get("extra", {})
    if extra.get("secrets"):
        parts += ["", "handshakes with 1 vs many configured secrets (returning clients)"]
        rows = []
        for mode, by_n in extra["secrets"].items():
            for n, v in by_n.items():
                rows.append([mode, n, _fmt(v["per_s"], 0), _fmt(v["cpu_ms_per_hs"], 3)])
        parts.append(_table(["mode", "secrets", "hs/s", "CPU ms/hs"], rows))
    if extra.get("flood"):
        parts += ["", "returning clients' handshakes without and with a garbage flood (no hint: a scan each)"]
        rows = []
        for name, v in extra["flood"].items():
            engine = v.get("engine") or {}
            for when in ("without", "with"):
                hs = v[when]
                rows.append([name, when, _fmt(hs["per_s"], 0), _fmt(hs["p50_ms"], 1), _fmt(hs["p99_ms"], 1),
                             str(hs["errors"]), _fmt(hs["engine_cpu_share"] * 100, 0)]
                            + ([str(v["garbage"].get("sent", "")), str(engine.get("scans", "")),
                                str(engine.get("scan-busy", ""))] if when == "with" else ["", "", ""]))
        parts.append(_table(["engine", "flood", "hs/s", "p50 ms", "p99 ms", "errors", "engine CPU %",
                             "garbage sent", "scanned", "scan-busy"], rows))
    if extra.get("idle"):
        parts += ["", "memory per idle established session"]
        rows = []
        for subject, by_n in extra["idle"].items():
            for n, v in by_n.items():
                if "error" in v:
                    rows.append([subject, n, "error: " + v["error"], "", "", "", ""])
                    continue
                rows.append(
                    [
                        subject,
                        n,
                        str(v["sessions"]),
                        str(v["workers"]),
                        _fmt(v["KB_per_session_pss"], 1),
                        _fmt(v["KB_per_session_rss"], 1),
                        _fmt(v["pss_MB"], 0),
                    ]
                )
        parts.append(
            _table(
                ["subject", "target", "opened", "workers", "KB/session (PSS)", "KB/session (RSS)", "total PSS MB"], rows
            )
        )
    return "\n".join(parts)
