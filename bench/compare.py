#!/usr/bin/env python3
"""Runs every metric for our library, Node's cluster module and the floor,
interleaved over several rounds, and prints one table of medians (min-max)
and ratios; writes the same as JSON under bench/results/.

Usage: compare.py [--quick] [--only METRIC[,METRIC...]]
"""
import datetime, json, os, platform, signal, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
PROGRAMS = {
    "ours": [os.path.join(BIN, "ours")],
    "node": ["node", os.path.join(ROOT, "bench", "node", "cluster.js")],
    "floor": [os.path.join(BIN, "floor")],
}
PIN = ["taskset", "-c", "0"]
NOTES = {}


def metric(key, label, unit, job, counts, target, floor_job=None, pinned=False, ours_job=None, node_job=None):
    """counts: program -> (full, quick) count; target: (text, check(ours, node, floor))."""
    return dict(key=key, label=label, unit=unit, job=job, counts=counts, target=target,
                floor_job=floor_job or job, ours_job=ours_job or job, node_job=node_job or job, pinned=pinned)


def same(full, quick):
    return {p: (full, quick) for p in PROGRAMS}


METRICS = [
    metric("spawn-1", "spawn 1 worker to ready", "ms/worker", "spawn", same(1, 1), ("≤ 3", lambda o, n, f, ours: o <= 3)),
    metric("spawn-8", "spawn 8 workers to ready", "ms/worker", "spawn", same(8, 8), ("≤ 3", lambda o, n, f, ours: o <= 3)),
    metric("spawn-32", "spawn 32 workers to ready", "ms/worker", "spawn", same(32, 32), ("≤ 3", lambda o, n, f, ours: o <= 3)),
    metric("pingpong-pinned", "ping-pong round trip, pinned to CPU 0 (floor: tokio)", "µs", "pingpong",
           {"ours": (20000, 5000), "node": (10000, 3000), "floor": (20000, 5000)},
           ("≤ 1.5x floor", lambda o, n, f, ours: o <= 1.5 * f), floor_job="pingpong-tokio", pinned=True),
    metric("pingpong-pinned-std", "ping-pong round trip, pinned to CPU 0 (floor: std)", "µs", "pingpong",
           {"ours": (20000, 5000), "node": (10000, 3000), "floor": (20000, 5000)},
           ("—", None), pinned=True),
    metric("pingpong-tokio", "ping-pong round trip, unpinned (floor: tokio)", "µs", "pingpong",
           {"ours": (20000, 5000), "node": (10000, 3000), "floor": (20000, 5000)},
           ("≤ 1.2x floor", lambda o, n, f, ours: o <= 1.2 * f), floor_job="pingpong-tokio"),
    metric("pingpong-std", "ping-pong round trip, unpinned (floor: std)", "µs", "pingpong",
           {"ours": (20000, 5000), "node": (10000, 3000), "floor": (20000, 5000)},
           ("≤ 1.2x floor", lambda o, n, f, ours: o <= 1.2 * f)),
    metric("request-pinned", "request/response round trip, pinned to CPU 0 (floor: tokio ping-pong)", "µs", "request",
           {"ours": (20000, 5000), "node": (10000, 3000), "floor": (20000, 5000)},
           ("≤ 1.5x our ping-pong", lambda o, n, f, ours: o <= 1.5 * ours("pingpong-pinned")),
           floor_job="pingpong-tokio", pinned=True),
    metric("request", "request/response round trip, unpinned (floor: tokio ping-pong)", "µs", "request",
           {"ours": (20000, 5000), "node": (10000, 3000), "floor": (20000, 5000)},
           ("≥ 4x faster than Node", lambda o, n, f, ours: o * 4 <= n), floor_job="pingpong-tokio"),
    metric("requests", "requests, 4 workers, 256 in flight (dispatch)", "req/s", "requests",
           {"ours": (200000, 50000), "node": (100000, 20000), "floor": (0, 0)},
           ("—", None), floor_job="-"),
    metric("request-bytes", "bytes request/response round trip (64 B bodies), unpinned", "µs", "request-bytes",
           {"ours": (20000, 5000), "node": (0, 0), "floor": (0, 0)},
           ("≤ the JSON request", lambda o, n, f, ours: o <= ours("request")), floor_job="-", node_job="-"),
    metric("node-pingpong", "Node.js worker (node mode): ping-pong round trip", "µs", "node-pingpong",
           {"ours": (10000, 3000), "node": (10000, 3000), "floor": (0, 0)},
           ("primary not the slower side", lambda o, n, f, ours: o <= n), floor_job="-"),
    metric("node-down", "Node.js worker (node mode): small messages to it", "msg/s", "node-down",
           {"ours": (200000, 50000), "node": (200000, 50000), "floor": (0, 0)},
           ("primary not the slower side", lambda o, n, f, ours: o >= n), floor_job="-"),
    metric("down", "small messages (64 B), primary → worker", "msg/s", "down",
           {"ours": (500000, 100000), "node": (200000, 50000), "floor": (5000000, 1000000)},
           ("≥ 2 M/s", lambda o, n, f, ours: o >= 2e6)),
    metric("up", "small messages (64 B), worker → primary", "msg/s", "up",
           {"ours": (500000, 100000), "node": (200000, 50000), "floor": (5000000, 1000000)},
           ("≥ 2 M/s", lambda o, n, f, ours: o >= 2e6)),
    metric("typed-json", "typed messages (~64 B, routed by `type`), primary → worker, JSON", "msg/s", "typed-json",
           {"ours": (500000, 100000), "node": (0, 0), "floor": (0, 0)}, ("—", None), floor_job="-", node_job="-"),
    metric("typed-msgpack", "MessagePack typed vs JSON typed: as above, MessagePack", "msg/s",
           "typed-msgpack", {"ours": (500000, 100000), "node": (0, 0), "floor": (0, 0)},
           ("≥ JSON typed", lambda o, n, f, ours: o >= ours("typed-json")), floor_job="-", node_job="-"),
    metric("large", "64 KiB messages, primary → worker", "MB/s", "large",
           {"ours": (5000, 1000), "node": (2000, 500), "floor": (10000, 2000)},
           ("≥ 1500 MB/s", lambda o, n, f, ours: o >= 1500)),
    metric("broadcast", "broadcast to 4 workers", "deliveries/s", "broadcast",
           {"ours": (250000, 50000), "node": (100000, 20000), "floor": (1000000, 200000)},
           ("≥ 1 M/s", lambda o, n, f, ours: o >= 1e6)),
    metric("bytes-down", "bytes messages (64 B), primary → worker (Node: JSON, its IPC has no raw bytes)", "msg/s", "bytes-down",
           {"ours": (1000000, 200000), "node": (200000, 50000), "floor": (5000000, 1000000)},
           ("≥ 0.25x floor", lambda o, n, f, ours: o >= 0.25 * f), floor_job="down", node_job="down"),
    metric("bytes-up", "bytes messages (64 B), worker → primary (Node: JSON)", "msg/s", "bytes-up",
           {"ours": (1000000, 200000), "node": (200000, 50000), "floor": (5000000, 1000000)},
           ("≥ 0.25x floor", lambda o, n, f, ours: o >= 0.25 * f), floor_job="up", node_job="up"),
    metric("bytes-large", "64 KiB bytes messages, primary → worker (Node: JSON)", "MB/s", "bytes-large",
           {"ours": (10000, 2000), "node": (2000, 500), "floor": (10000, 2000)},
           ("≥ 0.7x floor", lambda o, n, f, ours: o >= 0.7 * f), floor_job="large", node_job="large"),
    metric("bytes-broadcast", "broadcast of 64 B bytes messages to 4 workers (Node: JSON)", "deliveries/s", "bytes-broadcast",
           {"ours": (500000, 100000), "node": (100000, 20000), "floor": (1000000, 200000)},
           ("≥ 0.25x floor", lambda o, n, f, ours: o >= 0.25 * f), floor_job="broadcast", node_job="broadcast"),
    metric("bytes-16mib", "16 MiB bytes message round trip, sealed memfds (floor: one memcpy of 16 MiB)", "ms", "bytes-16mib",
           {"ours": (100, 20), "node": (0, 0), "floor": (200, 50)},
           ("≤ 2x (memcpy + our ping-pong)", lambda o, n, f, ours: o <= 2 * (f + ours("pingpong-tokio") / 1000)),
           floor_job="memcpy-16mib", node_job="-"),
    metric("http", "HTTP, 2 workers on one port, wrk -c64, shared socket (floor: our stack, 1 process, 2 threads)",
           "req/s", "http", same(5, 2), ("≥ 2x Node", lambda o, n, f, ours: o >= 2 * n)),
    metric("http-reuseport", "HTTP, as above, SO_REUSEPORT per worker", "req/s", "http",
           same(5, 2), ("≥ 2x Node", lambda o, n, f, ours: o >= 2 * n), ours_job="http-reuseport"),
    metric("http-rr", "HTTP, as above, round robin by the primary (Node's mode)", "req/s", "http",
           same(5, 2), ("≥ 2x Node", lambda o, n, f, ours: o >= 2 * n), ours_job="http-rr"),
    metric("cli-lines", "worker output through the CLI, 1 worker printing numbered lines (floor: the same lines through `cat`)",
           "lines/s", "cli-lines", {"ours": (2000000, 500000), "node": (0, 0), "floor": (2000000, 500000)},
           ("—", None), node_job="-"),
    metric("restart", "restart: SIGKILL → replacement ready", "ms", "restart", same(20, 5),
           ("≤ 5", lambda o, n, f, ours: o <= 5)),
    metric("shutdown", "shut down 8 ready workers → all exited", "ms", "shutdown", same(8, 8),
           ("≤ 10", lambda o, n, f, ours: o <= 10)),
    metric("rss-primary", "RSS of the primary with 1 worker", "MiB", "rss-primary", same(0, 0),
           ("≤ 6", lambda o, n, f, ours: o <= 6)),
    metric("rss-worker", "RSS of an idle worker", "MiB", "rss-worker", same(0, 0),
           ("≤ 4", lambda o, n, f, ours: o <= 4)),
]


def lines_per_second(program, count):
    """Lines of `seq` read from the CLI's stdout (ours) or from `cat` (floor)."""
    produce = "seq 1 %d" % count
    if program == "ours":
        command = [os.path.join(BIN, "isotropic-cluster"), "run", "--workers", "1", "--",
                   "sh", "-c", produce + "; exec sleep 60"]
    else:
        command = ["sh", "-c", produce + " | cat"]
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen = 0
    while seen < count:
        chunk = child.stdout.read1(1 << 16)
        if not chunk:
            break
        seen += chunk.count(b"\n")
    elapsed = time.monotonic() - started
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=30)
    if seen < count:
        return None, "%d of %d lines" % (seen, count)
    return count / elapsed, None


def run(program, job, count, pinned):
    if job == "cli-lines":
        return lines_per_second(program, count)
    command = list(PROGRAMS[program])
    if job.startswith("http") and program != "node":
        command[0] += "-http"  # the HTTP stack lives in its own binaries
    command = (PIN if pinned else []) + command + [job, str(count)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None, (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]
    try:
        result = json.loads(lines[-1])
        if "note" in result:
            NOTES.setdefault((program, job), []).append(result["note"])
        return float(result["value"]), None
    except (ValueError, KeyError):
        return None, "unreadable output: " + lines[-1][:80]


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(), "node": node, "rustc": rustc}


def summary(samples):
    if not samples:
        return None
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


def fmt(value):
    if value is None:
        return "—"
    if value >= 1e6:
        return "%.2f M" % (value / 1e6)
    if value >= 1e4:
        return "%.0f k" % (value / 1e3)
    if value >= 100:
        return "%.0f" % value
    if value >= 10:
        return "%.1f" % value
    return "%.2f" % value


def cell(s):
    if s is None:
        return "—"
    return "%s (%s–%s)" % (fmt(s["median"]), fmt(s["min"]), fmt(s["max"]))


def main():
    quick = "--quick" in sys.argv
    only = None
    if "--only" in sys.argv:
        only = set(sys.argv[sys.argv.index("--only") + 1].split(","))
    metrics = [m for m in METRICS if only is None or m["key"] in only]
    rounds = 2 if quick else 5
    samples = {m["key"]: {p: [] for p in PROGRAMS} for m in metrics}
    errors = {}
    for round_ in range(rounds):
        for m in metrics:
            for program in PROGRAMS:
                job = {"floor": m["floor_job"], "ours": m["ours_job"], "node": m["node_job"]}[program]
                if job == "-":
                    continue
                count = m["counts"][program][1 if quick else 0]
                value, error = run(program, job, count, m["pinned"])
                if value is None:
                    errors.setdefault(m["key"], {})[program] = error
                else:
                    samples[m["key"]][program].append(value)
            print("round %d/%d: %s done" % (round_ + 1, rounds, m["key"]), file=sys.stderr)

    medians = {m["key"]: (statistics.median(samples[m["key"]]["ours"]) if samples[m["key"]]["ours"] else float("nan"))
               for m in metrics}
    ours_median = lambda key: medians.get(key, float("nan"))
    results = []
    header = "| metric | unit | ours | Node | floor | ours/Node | ours/floor | target | met |"
    lines = [header, "|" + "---|" * 9]
    for m in metrics:
        s = {p: summary(samples[m["key"]][p]) for p in PROGRAMS}
        med = {p: (s[p]["median"] if s[p] else None) for p in PROGRAMS}
        ratio = lambda a, b: (a / b) if a is not None and b else None
        text, check = m["target"]
        met = None
        if check and None not in med.values():
            met = bool(check(med["ours"], med["node"], med["floor"], ours_median))
        elif check and med["ours"] is not None and med["node"] is not None and "floor" not in text:
            met = bool(check(med["ours"], med["node"], 0, ours_median))
        elif check and m["node_job"] == "-" and med["ours"] is not None and med["floor"] is not None:
            met = bool(check(med["ours"], 0, med["floor"], ours_median))
        elif check and m["node_job"] == m["floor_job"] == "-" and med["ours"] is not None:
            met = bool(check(med["ours"], 0, 0, ours_median))
        results.append({"metric": m["key"], "label": m["label"], "unit": m["unit"], "pinned": m["pinned"],
                        "ours": s["ours"], "node": s["node"], "floor": s["floor"],
                        "ours_over_node": ratio(med["ours"], med["node"]),
                        "ours_over_floor": ratio(med["ours"], med["floor"]),
                        "target": text, "met": met, "errors": errors.get(m["key"], {})})
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            m["label"], m["unit"], cell(s["ours"]), cell(s["node"]), cell(s["floor"]),
            fmt(ratio(med["ours"], med["node"])) + "x" if med["node"] and med["ours"] else "—",
            fmt(ratio(med["ours"], med["floor"])) + "x" if med["floor"] and med["ours"] else "—",
            text, {True: "yes", False: "**no**", None: "—"}[met]))
    table = "\n".join(lines)
    print(table)
    for (program, job), notes in NOTES.items():
        print("note: %s %s: %s" % (program, job, "; ".join(notes)))
    for key, errs in errors.items():
        for program, error in errs.items():
            print("error: %s / %s: %s" % (key, program, error))

    when = datetime.datetime.now(datetime.timezone.utc)
    report = {"date": when.isoformat(timespec="seconds"), "mode": "quick" if quick else "full",
              "rounds": rounds, "machine": machine(), "command": "bench/compare.sh" + (" --quick" if quick else ""),
              "results": results, "table": table,
              "notes": {"%s %s" % key: notes for key, notes in NOTES.items()}}
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    name = when.strftime("%Y-%m-%dT%H%M%SZ") + ("-quick" if quick else "") + ".json"
    path = os.path.join(ROOT, "bench", "results", name)
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    print("\nwritten to bench/results/%s (%s; %d cores; kernel %s)" % (
        name, report["machine"]["cpu"], report["machine"]["cores"], report["machine"]["kernel"]))
    return 1 if any(errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
