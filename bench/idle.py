#!/usr/bin/env python3
"""The idle cost of the supervision engine: the CLI runs N idle workers
(the documented Python worker on our framed channel, which answers
heartbeats) for a while, the engine off (--no-control-socket) or on (ENGINE_FLAGS:
sampling every second with a memory limit, and heartbeats), runs
interleaved; prints the
primary's CPU time per idle worker per minute and its RSS, as medians (min-max)
of the runs, and the ratio on/off. See docs/performance.md.

Usage: idle.py [--workers N] [--seconds S] [--runs R] [--cli PATH]

The CPU time is the sum of the primary's threads' time on a CPU
(/proc/PID/task/*/schedstat, in ns: clock ticks are too coarse for an idle
process), from once every worker is ready to the end of the window.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

from procs import stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The workers, idle: they answer heartbeats, and nothing else comes.
WORKERS = ["--channel", "frames", "--", "python3", os.path.join(ROOT, "examples/workers/echo_worker.py")]
# What "on" adds: every worker sampled every second, and watched with a
# heartbeat every 2.5 s.
ENGINE_FLAGS = ["--max-memory", "1G", "--watchdog", "10s"]
# (The control socket samples every worker every second for `status`: off,
# nothing watches the workers.)
MODES = {"off": ["--no-control-socket"], "on": ENGINE_FLAGS}


def cpu_ns(pid):
    """Time on a CPU of every thread of `pid`, in ns."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return total


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_run(cli, flags, workers, seconds):
    """CPU time of the primary (ns) over `seconds` of idle workers, and its RSS."""
    with tempfile.TemporaryFile(mode="w+") as log:
        line = [cli, "run", "--workers", str(workers), *flags, *WORKERS]
        primary = subprocess.Popen(line, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:
                log.seek(0)
                if f"worker {workers} ready" in log.read():
                    break
                if primary.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the workers did not get ready: {line}")
                time.sleep(0.05)
            start = cpu_ns(primary.pid)
            time.sleep(seconds)
            used = cpu_ns(primary.pid) - start
            rss = rss_mib(primary.pid)
        finally:
            stop(primary)
    return used, rss


def summary(values, digits):
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cli", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "isotropic-cluster"))
    args = parser.parse_args()
    if not os.path.exists(args.cli):
        sys.exit(f"no CLI at {args.cli}: cargo build --release -p isotropic-cluster-cli")
    results = {mode: {"cpu": [], "rss": []} for mode in MODES}
    for run in range(args.runs):
        for mode, flags in MODES.items():
            used, rss = one_run(args.cli, flags, args.workers, args.seconds)
            # ms of CPU per idle worker per minute
            per = used / 1e6 / args.workers * (60 / args.seconds)
            results[mode]["cpu"].append(per)
            results[mode]["rss"].append(rss)
            print(f"run {run + 1} {mode:3}: {used / 1e6:.2f} ms in {args.seconds:g} s, "
                  f"{per:.3f} ms/worker/min, RSS {rss:.2f} MiB", file=sys.stderr)
    print(f"{args.workers} idle workers, {args.seconds:g} s each, {args.runs} runs; on = {' '.join(ENGINE_FLAGS)}")
    print("| engine | primary CPU per idle worker per minute (ms) | primary RSS (MiB) |")
    print("|---|---|---|")
    for mode in MODES:
        print(f"| {mode} | {summary(results[mode]['cpu'], 3)} | {summary(results[mode]['rss'], 2)} |")
    off, on = (statistics.median(results[m]["cpu"]) for m in ("off", "on"))
    rss_off, rss_on = (statistics.median(results[m]["rss"]) for m in ("off", "on"))
    ratio = f"{on / off:.2f}x" if off > 0 else "— (off: none)"
    print(f"| on/off | {ratio} | {rss_on / rss_off:.2f}x |")
    print(f"| on − off | {on - off:+.3f} | {rss_on - rss_off:+.2f} |")


if __name__ == "__main__":
    main()
