#!/usr/bin/env python3
"""Lanes under load (issue 13): 8 bulk connections (4 KiB lines, pipelined)
and 32 interactive ones (64 B lines, closed loop), the two kinds from two
rot13d-bench processes, against rot13d with lanes on, with lanes off, and
the tokio and libevent peers, interleaved run by run so that all of them
share the same spells of outside load.

    cargo build --release --bins && ../shared/peers/build.sh peers-bin
    scripts/bench-lanes.py [RUNS] [DURATION]          # defaults 5 runs of 5 s

Per run and server: bulk MB/s and the interactive round trips (p50, p99)
as the clients see them; for rot13d also the server's own
rot13d_dispatch_delay_seconds histogram (from the wait returning with a
connection ready to its read callback), per lane, over the measured
window only (scraped from /metrics after the warm-up and at the end). The
server is pinned to CPU 0, both generators to CPU 1. Writes the raw runs to
bench-out/lanes.jsonl and the medians (and the medians of the paired
lanes-on / lanes-off ratios) to bench-out/lanes.md.

A rot13d server may name another binary: SERVERS="lanes@/tmp/old lanes".

Environment: NICE (niceness of server and generators, e.g. -10), RT=1
(the server at SCHED_FIFO 1), ROT13D (binary), SERVERS (default "lanes nolanes tokio
libevent"), LANES_CONFIG (extra TOML for both rot13d variants), WORKERS
(rot13d --workers, default 1), BULK, INTERACTIVE (connection counts).
"""
import json, os, re, socket, statistics, subprocess, sys, tempfile, time, urllib.request

TOP = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BIN = os.environ.get("ROT13D", os.path.join(TOP, "target", "release", "rot13d"))
BENCH = os.path.join(TOP, "target", "release", "rot13d-bench")
PEERS = os.path.join(TOP, "peers-bin")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
DURATION = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
WARMUP = 1.0
SERVERS = os.environ.get("SERVERS", "lanes nolanes tokio libevent").split()
EXTRA = os.environ.get("LANES_CONFIG", "")
WORKERS = os.environ.get("WORKERS", "1")
# The machine is shared: niceness for the server and the generators (0 =
# as started), so that other work preempts them less (BENCHMARKS.md). With
# autogroup scheduling a process's nice only weighs inside its session's
# group, so the group's nice is set too (/proc/self/autogroup).
NICE = ["nice", "-n", os.environ["NICE"]] if os.environ.get("NICE") else []
if NICE and os.path.exists("/proc/self/autogroup"):
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(os.environ["NICE"])
    except OSError as e:
        print(f"cannot set the autogroup's nice: {e}", file=sys.stderr)
# RT=1: the server runs SCHED_FIFO (priority 1; the kernel's RT throttling
# still leaves 5% of each second to others): preemption by other work
# then no longer makes the tail (BENCHMARKS.md).
RT = ["chrt", "-f", "1"] if os.environ.get("RT") else []
BULK = int(os.environ.get("BULK", "8"))
# The generators' CPU ("" = not pinned: with RT=1 they then also get what
# the server leaves of CPU 0).
GEN_CPU = os.environ.get("GEN_CPU", "1")
INTERACTIVE = int(os.environ.get("INTERACTIVE", "32"))
OUT = os.path.join(TOP, "bench-out")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, secs=10):
    end = time.time() + secs
    while time.time() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start(spec, tmp):
    """(process, port, admin port or None). `spec` is a server name, for
    rot13d optionally with another binary: `lanes@/tmp/rot13d-old`."""
    name, _, binary = spec.partition("@")
    port = free_port()
    admin = None
    if name in ("lanes", "nolanes"):
        admin = free_port()
        cfg = os.path.join(tmp, name + ".toml")
        enabled = "true" if name == "lanes" else "false"
        with open(cfg, "w") as f:
            f.write(f"[lanes]\nenabled = {enabled}\n{EXTRA}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n")
        cmd = [binary or BIN, "--listen", f"127.0.0.1:{port}", "--workers", WORKERS, "-c", cfg]
    elif name == "tokio":
        cmd = [os.path.join(PEERS, "rot13-tokio"), "--runtime", "multi", str(port), "127.0.0.1"]
    elif name == "libevent":
        cmd = [os.path.join(PEERS, "rot13-libevent"), str(port), "127.0.0.1"]
    else:
        sys.exit(f"unknown server {name}")
    log = open(os.path.join(tmp, name + ".log"), "w")
    name = spec
    p = subprocess.Popen((RT or NICE) + ["taskset", "-c", "0"] + cmd, stdout=log, stderr=log)
    if not wait_port(port, p) or (admin and not wait_port(admin, p)):
        p.kill()
        sys.exit(f"{name} did not start: {open(os.path.join(tmp, name + '.log')).read()}")
    return p, port, admin


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def cpu_ticks(pid):
    """utime + stime of `pid` and its children (a master and its workers)."""
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        kids = []
    pids = [pid] + [int(x) for x in kids]
    total = 0
    for q in pids:
        try:
            f = open(f"/proc/{q}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def histograms(admin):
    """{lane: [(le, cumulative count)...]} of rot13d_dispatch_delay_seconds."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    h = {}
    for m in re.finditer(r'^rot13d_dispatch_delay_seconds_bucket\{lane="(\w+)",le="([^"]+)"\} (\d+)$', body, re.M):
        le = float("inf") if m.group(2) == "+Inf" else float(m.group(2))
        h.setdefault(m.group(1), []).append((le, int(m.group(3))))
    return h


def quantile(before, after, q):
    """Quantile q (seconds) of the observations between two scrapes of one
    histogram, interpolated linearly inside its bucket; None if empty."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = counts[-1][1]
    if total == 0:
        return None, 0
    rank = q * total
    prev_le, prev_c = 0.0, 0
    for le, c in counts:
        if c >= rank:
            if le == float("inf"):
                return prev_le, total
            frac = (rank - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return prev_le + (le - prev_le) * frac, total
        prev_le, prev_c = le, c
    return prev_le, total


def one(name, tmp):
    p, port, admin = start(name, tmp)
    try:
        common = ["--addr", f"127.0.0.1:{port}", "--duration", str(DURATION), "--warmup", str(WARMUP), "--json"]
        if GEN_CPU:
            common += ["--cpu", GEN_CPU]
        bulk = subprocess.Popen(NICE + [BENCH, "tput", "--conns", str(BULK), "--line-len", "4096", "--window", os.environ.get("WINDOW", "4194304"), "--discard"] + common,
                                stdout=subprocess.PIPE, text=True)
        inter = subprocess.Popen(NICE + [BENCH, "lat", "--conns", str(INTERACTIVE), "--line-len", "64"] + common,
                                 stdout=subprocess.PIPE, text=True)
        server = p.pid
        time.sleep(WARMUP + 0.1)
        h0 = histograms(admin) if admin else None
        c0, t0 = cpu_ticks(server), time.time()
        time.sleep(DURATION - 0.2)
        c1, t1 = cpu_ticks(server), time.time()
        h1 = histograms(admin) if admin else None
        b_out, _ = bulk.communicate(DURATION + 120)
        i_out, _ = inter.communicate(DURATION + 120)
        if bulk.returncode or inter.returncode:
            sys.exit(f"{name}: generator failed ({bulk.returncode}, {inter.returncode})")
        b, i = json.loads(b_out.strip().splitlines()[-1]), json.loads(i_out.strip().splitlines()[-1])
        r = {"server": name, "bulk_mb_s": b["mb_per_s"], "req_s": i["req_per_s"], "p50_us": i["p50_us"], "p99_us": i["p99_us"],
             "server_cpu_pct": (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0) * 100}
        if admin:
            for lane in ("interactive", "bulk"):
                for q, k in ((0.5, "p50"), (0.99, "p99")):
                    v, n = quantile(h0[lane], h1[lane], q)
                    r[f"srv_{lane}_{k}_us"] = None if v is None else v * 1e6
                r[f"srv_{lane}_n"] = n
        return r
    finally:
        stop(p)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, d=1):
    return "-" if x is None else f"{x:,.{d}f}"


def main():
    os.makedirs(OUT, exist_ok=True)
    tmp = tempfile.mkdtemp()
    rows = []
    load0 = open("/proc/loadavg").read().split()[:3]
    raw = open(os.path.join(OUT, "lanes.jsonl"), "w")
    for run in range(RUNS):
        order = SERVERS if run % 2 == 0 else SERVERS[::-1]
        for s in order:
            r = one(s, tmp)
            r["run"] = run
            rows.append(r)
            raw.write(json.dumps(r) + "\n")
            raw.flush()
            print(json.dumps(r), file=sys.stderr)
    load1 = open("/proc/loadavg").read().split()[:3]
    by = {s: [r for r in rows if r["server"] == s] for s in SERVERS}
    lines = []
    lines.append(f"_{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
                 f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=TOP).stdout.strip()}, "
                 f"{RUNS} runs of {DURATION:g} s (after {WARMUP:g} s warm-up), {BULK} bulk + {INTERACTIVE} interactive connections, "
                 f"rot13d --workers {WORKERS}; load average {' '.join(load0)} at the start, {' '.join(load1)} at the end._")
    lines.append("")
    lines.append("| server | server CPU % | bulk MB/s | interactive k req/s | client p50 µs | client p99 µs | server interactive p50 µs | server interactive p99 µs | server bulk p50 µs | server bulk p99 µs |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in SERVERS:
        rs = by[s]
        lines.append(f"| {s} | {fmt(med([r['server_cpu_pct'] for r in rs]), 0)} | {fmt(med([r['bulk_mb_s'] for r in rs]), 0)} | {fmt(med([r['req_s'] / 1e3 for r in rs]))} | "
                     f"{fmt(med([r['p50_us'] for r in rs]))} | {fmt(med([r['p99_us'] for r in rs]))} | "
                     f"{fmt(med([r.get('srv_interactive_p50_us') for r in rs]))} | {fmt(med([r.get('srv_interactive_p99_us') for r in rs]))} | "
                     f"{fmt(med([r.get('srv_bulk_p50_us') for r in rs]))} | {fmt(med([r.get('srv_bulk_p99_us') for r in rs]))} |")
    for on in [s for s in SERVERS if s.startswith("lanes")]:
        off = "no" + on
        if off not in by:
            off = "nolanes"
        if off not in by:
            continue
        pairs = list(zip(by[on], by[off]))

        def ratio(k):
            v = [a[k] / b[k] for a, b in pairs if a.get(k) and b.get(k)]
            return (med(v), min(v) if v else None, max(v) if v else None)
        lines.append("")
        lines.append(f"{on} / {off}, median of the per-run ratios (min-max):")
        lines.append("")
        for k, what in (("srv_interactive_p99_us", "server-side interactive p99 (target ≤ 0.33)"),
                        ("bulk_mb_s", "bulk MB/s (target ≥ 0.90)"),
                        ("p99_us", "client-side interactive p99"),
                        ("req_s", "interactive req/s")):
            m, lo, hi = ratio(k)
            lines.append(f"- {what}: **{fmt(m, 2)}** ({fmt(lo, 2)}-{fmt(hi, 2)})")
    text = "\n".join(lines) + "\n"
    open(os.path.join(OUT, "lanes.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
