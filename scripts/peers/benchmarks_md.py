#!/usr/bin/env python3
"""Writes BENCHMARKS.md (to stdout) from the JSON lines scripts/bench.sh collected.

usage: benchmarks_md.py RESULTS.jsonl "k=v k=v ..."
"""
import datetime
import json
import os
import platform
import subprocess
import sys

TARGETS = ["carapace", "socketio", "nats", "raw"]
SCENARIOS = ["fanout", "fanout-paced", "connections", "cluster", "cluster-paced"]
METRICS = {
    "fanout": [
        ("deliveries_per_s", "deliveries/s", "{:,.0f}", "higher"),
        ("p50_ms", "p50 latency (ms)", "{:.2f}", "lower"),
        ("p99_ms", "p99 latency (ms)", "{:.2f}", "lower"),
        ("p999_ms", "p99.9 latency (ms)", "{:.2f}", "lower"),
        ("published", "events published", "{:,}", "higher"),
        ("delivered", "deliveries", "{:,}", "higher"),
        ("lost", "lost deliveries", "{:,}", "lower"),
        ("rss_kib_per_conn", "server KiB per connection", "{:.1f}", "lower"),
    ],
    "connections": [
        ("subscribers", "idle sessions held", "{:,}", "higher"),
        ("rss_kib_per_conn", "server KiB per session", "{:.2f}", "lower"),
        ("p50_ms", "connect+subscribe p50 (ms)", "{:.2f}", "lower"),
        ("p99_ms", "connect+subscribe p99 (ms)", "{:.2f}", "lower"),
    ],
}
METRICS["cluster"] = METRICS["fanout"][:7]
METRICS["fanout-paced"] = METRICS["fanout"][:7]
METRICS["cluster-paced"] = METRICS["fanout"][:7]


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass

    def version(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "not found"

    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU model", cpu),
        ("memory", mem),
        ("kernel", platform.release()),
        ("rustc", version(["rustc", "--version"])),
        ("node", version(["node", "--version"])),
        ("nats-server", version(["nats-server", "--version"])),
        ("redis-server", version(["redis-server", "--version"])),
    ]


def median_round(runs):
    """The run with the median deliveries/s (a failed run counts as the lowest)."""
    ranked = sorted(runs, key=lambda r: r.get("deliveries_per_s", -1) if "error" not in r else -1)
    return ranked[(len(ranked) - 1) // 2]


def main():
    results, params = sys.argv[1], sys.argv[2]
    rows = {}
    with open(results) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.setdefault((r.get("label") or r.get("scenario"), r.get("target")), []).append(r)
    rounds = rows
    rows = {k: median_round(v) for k, v in rows.items()}

    out = []
    out.append("# Benchmarks")
    out.append("")
    out.append(
        "Written by `scripts/bench.sh` on "
        + datetime.date.today().isoformat()
        + ". Every number below was measured in that run; rerun the script to refresh it."
    )
    out.append("")
    out.append("## Machine")
    out.append("")
    out.append("| | |")
    out.append("| --- | --- |")
    for k, v in machine():
        out.append(f"| {k} | {v} |")
    out.append("")
    out.append("## Parameters")
    out.append("")
    out.append("| parameter | value |")
    out.append("| --- | --- |")
    for kv in params.split():
        k, _, v = kv.partition("=")
        out.append(f"| {k} | {v} |")
    out.append("")
    out.append(
        "Same client (`carapace bench`), same workload, every server started fresh on loopback. "
        "Carapace persists every post in SQLite (fanout, connections) or PostgreSQL (cluster) "
        "and runs with `--rate-limits off`; Socket.IO 4 runs one Node.js process per replica "
        "with `@socket.io/redis-adapter`; NATS is Debian's nats-server with its WebSocket "
        "listener (a cluster with routes for `cluster`); raw is the minimal tokio-tungstenite "
        "broadcast server inside the bench (no auth, no storage), the ceiling of the stack."
    )
    out.append("")
    out.append("## Results")
    out.append("")
    header = "| scenario | metric | " + " | ".join(TARGETS) + " | carapace/socketio | carapace/nats | carapace/raw |"
    out.append(header)
    out.append("|" + " --- |" * (2 + len(TARGETS) + 3))
    for sc in SCENARIOS:
        if not any((sc, t) in rows for t in TARGETS):
            continue
        for key, label, fmt, _better in METRICS[sc]:
            cells = []
            for t in TARGETS:
                r = rows.get((sc, t))
                if r is None:
                    cells.append("n/a")
                elif "error" in r:
                    cells.append("failed")
                elif key in r:
                    cells.append(fmt.format(r[key]))
                else:
                    cells.append("n/a")
            ratios = []
            base = rows.get((sc, "carapace"), {})
            for other in ["socketio", "nats", "raw"]:
                o = rows.get((sc, other), {})
                a, b = base.get(key), o.get(key)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                    ratios.append(f"{a / b:.2f}")
                else:
                    ratios.append("")
            out.append(f"| {sc} | {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        if any(len(rounds.get((sc, t), [])) > 1 for t in TARGETS):
            cells = []
            for t in TARGETS:
                runs = rounds.get((sc, t), [])
                cells.append(" / ".join(
                    "failed" if "error" in r else f"{r.get('deliveries_per_s', 0):,.0f}" for r in runs
                ) or "n/a")
            out.append(f"| {sc} | deliveries/s, every round | " + " | ".join(cells) + " |  |  |  |")
    out.append("")
    out.append("Ratios divide Carapace's number by the peer's: above 1 is better for throughput, below 1 is better for latency and memory.")
    out.append("")
    out.append("## How to read it")
    out.append("")
    out.extend([
        "- `fanout` runs `fanout_rounds` times per target, the rounds interleaved (each round runs every target "
        "once), and the table shows each target's median round; the row 'every round' lists them all.",
        "- `fanout`: publishers post as fast as the target absorbs, each keeping at most `window` events in flight "
        "(sent, not yet delivered to every subscriber); latency then is mostly queueing (Little's law), so at equal "
        "windows the faster target also shows the lower latency.",
        "- `fanout-paced` and `cluster-paced`: the same workload paced at a fixed event rate every target sustains, "
        "so latency is compared at one load (`--rate`).",
        "- `connections`: idle sessions (Carapace: authenticated agents), each subscribed to one topic; memory is the "
        "server's resident set growth divided by the sessions. The session count is bounded by the machine's hard "
        "limit on open files per process (`nofile` above); 50,000 needs a higher limit than this sandbox grants.",
        "- `cluster`: publishers on the first replica, subscribers spread over the other two. Carapace uses "
        "PostgreSQL and Redis, Socket.IO its Redis adapter, NATS its own cluster routes.",
        "- Latency is measured from the send time written into each payload to the read, on the bench's one clock; "
        "`lost` counts (event, subscriber) pairs never delivered.",
        "- The bench client runs on the same two cores as the server under test, and other work on the machine "
        "may take CPU too: compare targets within one run, not across runs.",
    ])
    out.append("")
    out.append("## Raw JSON lines")
    out.append("")
    out.append("```")
    with open(results) as f:
        out.extend(l.rstrip() for l in f if l.strip())
    out.append("```")
    print("\n".join(out))


if __name__ == "__main__":
    main()
