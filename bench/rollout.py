#!/usr/bin/env python3
"""A reload of 4 workers under HTTP load, ours against PM2's: how long the
rollout takes, how many requests fail meanwhile, how few workers are ready.

The same Node app (bench/node/rollout_app.js: node:http only, 300 ms of work
before it listens, process.send('ready') once it listens) runs as 4 workers
  - under ours: isotropic-cluster run --workers 4 --json --listen 127.0.0.1:0
    --channel node -- node rollout_app.js (the app listens on fd 3; ready on
    its 'ready' message), reloaded by a SIGHUP to the CLI;
  - under PM2: cluster mode, 4 instances, wait_ready (PM2 too waits for the
    'ready' message), reloaded by `pm2 reload`. PM2 is installed by this
    script with npm into a private prefix (isotropic-cluster-bench-pm2 in
    the temp dir, reused by later runs), and run with a private PM2_HOME
    (`pm2 kill` at the end); if npm cannot install it, PM2's rows are skipped.
Runs alternate (ours, PM2, ours, ...). In each, CLIENTS threads send RATE
requests per second in all (the same load for both), each on a fresh
loopback connection, from LEAD s before the reload until TAIL s after its
end. Per run it measures:
  - rollout: from the request (SIGHUP sent; `pm2 reload` started) to its end
    (the CLI's reloadComplete line read; `pm2 reload` returned, which
    includes the pm2 command's own start, printed apart);
  - failed: requests refused, reset, timed out (2 s) or not answered 200,
    of all sent in the window; the 99th percentile and the slowest request
    (a gap in service shows as a stall or a failure);
  - fewest ready, the supervisor's view, within the rollout: ours from the
    --json lines (workerReady adds a worker, removeWorker/workerExit removes
    it), PM2's from its process list (`online`), polled every 50 ms through
    its API (bench/node/pm2_watch.js);
  - fewest (and most) serving, the app's view, within the rollout: workers
    that listened and have not been told to leave (each app logs both
    moments); the most is the surge seen (4 + the surge).
Prints a line per run (stderr), then medians (min-max) and ratios ours/PM2.

Usage: rollout.py [--runs N] [--clients C] [--rate R] [--start-ms MS]
                  [--cli PATH] [--pm2-version SPEC] [--no-pm2]
Needs node and npm (for PM2); builds the CLI in release unless --cli is given.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

from procs import stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "bench", "node", "rollout_app.js")
WATCH = os.path.join(ROOT, "bench", "node", "pm2_watch.js")
WORKERS = 4
LEAD, TAIL = 0.5, 0.5  # s of load before the reload and after its end
NAME = "rollout-bench"  # PM2's name of the app
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


class Load:
    """CLIENTS threads sending RATE requests per second in all, each on a
    fresh connection (a thread that falls behind sends its next at once)."""

    def __init__(self, port, clients, rate, cap=100_000):
        self.port, self.stop, self.results = port, threading.Event(), []
        self.threads = [threading.Thread(target=self.client, args=(clients / rate, cap)) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def client(self, interval, cap):
        done, due = [], time.monotonic()
        while not self.stop.wait(max(0, due - time.monotonic())) and len(done) < cap:
            due = max(due + interval, time.monotonic())
            start = time.time()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                    conn.sendall(REQUEST)
                    answer = b""
                    while chunk := conn.recv(4096):
                        answer += chunk
                failure = None if answer.startswith(b"HTTP/1.1 200") else "not answered 200"
            except OSError as error:
                failure = type(error).__name__
            done.append((start, time.time(), failure))
        self.results.extend(done)  # (list.extend is atomic)

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join()
        return self.results


class Lines:
    """Every line of a pipe, with the time it was read, collected by a thread."""

    def __init__(self, pipe):
        self.lines, self.cond = [], threading.Condition()
        threading.Thread(target=self.read, args=(pipe,), daemon=True).start()

    def read(self, pipe):
        for line in pipe:
            with self.cond:
                self.lines.append((time.time(), line.rstrip("\n")))
                self.cond.notify_all()

    def wait(self, found, timeout, what):
        """The time of the first line for which found(line) holds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, line in self.lines:
                    if found(line):
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {what} within {timeout} s")
                self.cond.wait(left)


def json_lines(lines):
    for t, line in lines:
        try:
            yield t, json.loads(line)
        except ValueError:
            pass  # (not one of ours)


def counts(changes, start, end):
    """Every count within [start, end], given (time, count) changes."""
    before = [count for t, count in changes if t <= start]
    return before[-1:] + [count for t, count in changes if start < t <= end] or [0]


def ours_ready(lines):
    """(time, workers ready) after each --json line that changes it."""
    ready, changes = set(), []
    for t, event in json_lines(lines):
        kind, worker = event.get("event"), event.get("worker")
        if kind == "workerReady":
            ready.add(worker)
        elif kind in ("removeWorker", "workerExit"):
            ready.discard(worker)
        else:
            continue
        changes.append((t, len(ready)))
    return changes


def app_serving(log):
    """(time, workers serving) after each line of the apps' ROLLOUT_LOG."""
    serving, changes = set(), [(0, 0)]  # (none before the first line)
    with open(log) as f:
        notes = sorted((json.loads(line) for line in f if line.strip()), key=lambda n: n["t"])
    for note in notes:
        (serving.add if note["state"] == "serving" else serving.discard)(note["pid"])
        changes.append((note["t"] / 1000, len(serving)))
    return changes


def wait_serving(log, count, timeout):
    deadline = time.monotonic() + timeout
    while (app_serving(log) if os.path.exists(log) else [(0, 0)])[-1][1] != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers did not listen within {timeout} s")
        time.sleep(0.05)


def under_load(offered, reload):
    """Runs reload() (which returns the rollout's (start, end)) under the
    offered load, (port, clients, rate): its start, its end, and every
    request's (start, end, failure or None)."""
    load = Load(*offered)
    try:
        time.sleep(LEAD)
        start, end = reload()
        time.sleep(TAIL)
    finally:
        results = load.finish()
    return start, end, results


def figures(start, end, results, ready, serving, extra=""):
    latencies = sorted(e - s for s, e, _ in results) or [0]
    # How each failed, and when it was sent, from the request of the rollout.
    failures = sorted((s - start, failure) for s, _, failure in results if failure)
    extra += "".join(f"; failed: {failure} sent at {at:+.2f} s" for at, failure in failures[:5])
    return dict(rollout=end - start, failed=len(failures), requests=len(results),
                p99=latencies[int(0.99 * (len(latencies) - 1))] * 1000, slowest=latencies[-1] * 1000,
                ready=min(counts(ready, start, end)), serving=min(counts(serving, start, end)),
                most=max(counts(serving, start, end)), extra=extra)


def run_ours(cli, load, tmp, n, flags):
    log = os.path.join(tmp, f"ours-{n}.log")
    line = [cli, "run", "--workers", str(WORKERS), "--json", "--listen", "127.0.0.1:0",
            "--channel", "node", *flags, "--", "node", APP]
    # (--json: one stream of JSON lines on stdout, the workers' output too.)
    cli_process = subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   env={**os.environ, "ROLLOUT_LOG": log})
    try:
        lines = Lines(cli_process.stdout)
        lines.wait(lambda l: '"listening"' in l, 10, "listening line")
        port = int(next(e["address"] for _, e in json_lines(lines.lines) if e.get("event") == "listening")
                   .rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while not ours_ready(lines.lines) or ours_ready(lines.lines)[-1][1] < WORKERS:
            if time.monotonic() > deadline or cli_process.poll() is not None:
                raise RuntimeError(f"the workers did not get ready: {' '.join(line)}")
            time.sleep(0.05)

        def reload():
            start = time.time()
            cli_process.send_signal(signal.SIGHUP)
            end = lines.wait(lambda l: '"reloadComplete"' in l or '"rolloutFailed"' in l, 60, "reloadComplete line")
            for _, event in json_lines(lines.lines):
                if event.get("event") == "rolloutFailed":
                    raise RuntimeError(f"the rollout failed: {event.get('message')}")
            return start, end

        return figures(*under_load((port, *load), reload), ours_ready(lines.lines), app_serving(log))
    finally:
        stop(cli_process)


class Pm2:
    """PM2 from a private npm prefix, with a private PM2_HOME."""

    def __init__(self, version, tmp):
        self.prefix = os.path.join(tempfile.gettempdir(), "isotropic-cluster-bench-pm2")
        self.bin = os.path.join(self.prefix, "node_modules", ".bin", "pm2")
        self.module = os.path.join(self.prefix, "node_modules", "pm2")
        self.env = {**os.environ, "PM2_HOME": os.path.join(tmp, "pm2-home")}
        self.tmp = tmp
        self.problem = self.install(version)

    def install(self, version):
        """None once PM2 is usable, else why not."""
        if not shutil.which("npm"):
            return "npm is not installed"
        try:
            subprocess.run(["npm", "install", "--prefix", self.prefix, "--no-audit", "--no-fund", "--loglevel=error",
                            "--fetch-retries=1", "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=5000",
                            f"pm2@{version}"],
                           check=True, timeout=120, capture_output=True, text=True)
        except subprocess.CalledProcessError as error:
            why = [line for line in error.stderr.splitlines() if "complete log" not in line]
            return f"npm install pm2@{version} failed: {' / '.join(why[:3])}"
        except subprocess.TimeoutExpired:
            return f"npm install pm2@{version} took over 120 s"
        with open(os.path.join(self.module, "package.json")) as f:
            self.version = json.load(f)["version"]
        return None

    def pm2(self, *args, timeout=60):
        done = subprocess.run([self.bin, *args], env=self.env, timeout=timeout,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pm2 {' '.join(args)} failed: {done.stderr.strip()[-300:]}")

    def run(self, load, n):
        log = os.path.join(self.tmp, f"pm2-{n}.log")
        with socket.socket() as probe:  # a free port (PM2's app needs a number)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        ecosystem = os.path.join(self.tmp, f"ecosystem-{n}.config.js")
        app = dict(name=NAME, script=APP, exec_mode="cluster", instances=WORKERS, wait_ready=True,
                   listen_timeout=10000, env=dict(PORT=str(port), ROLLOUT_LOG=log))
        with open(ecosystem, "w") as f:
            f.write(f"module.exports = {json.dumps({'apps': [app]})};\n")
        watch = None
        try:
            self.pm2("start", ecosystem)
            wait_serving(log, WORKERS, 30)
            watch = subprocess.Popen(["node", WATCH, self.module, NAME, "50"], env=self.env,
                                     stdout=subprocess.PIPE, text=True)
            polls = Lines(watch.stdout)
            polls.wait(lambda l: f'"online":{WORKERS}' in l, 10, "poll with every worker online")
            before = time.time()
            self.pm2("ping")
            own_start = time.time() - before

            def reload():
                start = time.time()
                self.pm2("reload", NAME, timeout=120)
                return start, time.time()

            start, end, results = under_load((port, *load), reload)
            online = [(e["t"] / 1000, e["online"]) for _, e in json_lines(polls.lines)]
            return figures(start, end, results, online, app_serving(log),
                           extra=f"; the pm2 command's own start: ~{own_start:.2f} s")
        finally:
            if watch:
                watch.terminate()
                watch.wait()
            self.quietly("delete", NAME)

    def quietly(self, *args):
        """pm2 ARGS, a failure printed (on the way out of a run, or at the end)."""
        try:
            self.pm2(*args)
        except (RuntimeError, subprocess.SubprocessError, OSError) as error:
            print(f"pm2 {' '.join(args)}: {error}", file=sys.stderr)


# (key, label, digits, whether ours/PM2 means something)
ROWS = [("rollout", "rollout duration (s)", 2, True), ("failed", "failed requests", 0, False),
        ("requests", "requests sent in the window", 0, False), ("p99", "99th percentile request (ms)", 0, True),
        ("slowest", "slowest request (ms)", 0, True), ("ready", "fewest ready, the supervisor's view", 0, True),
        ("serving", "fewest serving, the app's view", 0, True), ("most", "most serving, the app's view", 0, True)]


def summary(values, digits):
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def build_cli():
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "isotropic-cluster-cli"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "isotropic-cluster")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--rate", type=float, default=200, help="requests per second, all clients (default 200)")
    parser.add_argument("--start-ms", type=int, default=300, help="the app's work before it listens")
    parser.add_argument("--cli", help="our CLI (default: built here in release)")
    parser.add_argument("--pm2-version", default="7", help="what npm installs (default 7)")
    parser.add_argument("--no-pm2", action="store_true")
    parser.add_argument("--ours", action="append", default=[], metavar="FLAG",
                        help="an extra flag for our CLI, e.g. --ours=--min-uptime=0s (repeatable)")
    args = parser.parse_args()
    os.environ["START_MS"] = str(args.start_ms)
    cli = args.cli or build_cli()
    load = (args.clients, args.rate)
    machine_load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        pm2 = None if args.no_pm2 else Pm2(args.pm2_version, tmp)
        if pm2 and pm2.problem:
            print(f"skipping PM2: {pm2.problem}", file=sys.stderr)
            pm2 = None
        results = {"ours": [], "pm2": []}
        try:
            for n in range(1, args.runs + 1):
                for who, one in [("ours", lambda: run_ours(cli, load, tmp, n, args.ours)),
                                 ("pm2", pm2 and (lambda: pm2.run(load, n)))]:
                    if not one:
                        continue
                    try:
                        r = one()
                    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                        print(f"run {n} {who:4}: no figures: {error}", file=sys.stderr)
                        continue
                    results[who].append(r)
                    print(f"run {n} {who:4}: rollout {r['rollout']:.2f} s, {r['failed']} failed of "
                          f"{r['requests']} requests, p99 {r['p99']:.0f} ms, slowest {r['slowest']:.0f} ms, "
                          f"ready at least {r['ready']} (supervisor's view), serving {r['serving']} to "
                          f"{r['most']} (app's view){r['extra']}", file=sys.stderr, flush=True)
        finally:
            if pm2:
                pm2.quietly("kill")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load average "
          f"{machine_load[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {WORKERS} workers of "
          f"bench/node/rollout_app.js ({args.start_ms} ms start), {args.rate:g} requests/s from {args.clients} clients, "
          f"{args.runs} runs; "
          f"node {node}" + (f", PM2 {pm2.version}" if pm2 else ", no PM2"))
    print("| figure | ours | PM2 | ours/PM2 |")
    print("|---|---|---|---|")
    for key, label, digits, ratio in ROWS:
        cells = [summary([r[key] for r in results[w]], digits) if results[w] else "—" for w in ("ours", "pm2")]
        medians = [statistics.median(r[key] for r in results[w]) if results[w] else 0 for w in ("ours", "pm2")]
        ratio = f"{medians[0] / medians[1]:.2f}x" if ratio and medians[0] and medians[1] else "—"
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main()
