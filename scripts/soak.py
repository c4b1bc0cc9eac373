#!/usr/bin/env python3
"""Soak and memcheck workload for rot13d (not part of the nextest suite).

Starts rot13d (2 workers, idle_timeout 2 s, write_timeout 3 s, an admin
endpoint) and drives it with a mix of clients, every answer checked:

  verify  connect, send 1..20,000 bytes of lines, half-close, read the
          answer to EOF and compare it with rot13 (0 refused, 0 cut wanted)
  reset   connect, send 1..100,000 bytes, close with SO_LINGER 0 (RST)
  slow    connect, send without reading until the write timeout closes it
  idle    connect, send a partial line, expect its answer and EOF at the
          idle timeout

verify and reset clients are paced ("the load", counted in sessions per
second); two slow and two idle clients run beside them all the time.

Soak mode (default):
  1. peak: the paced clients run unthrottled for --peak seconds; their rate
     is the measured peak (generator and daemon share the machine);
  2. warm-up: one reload period at half that rate (--rate overrides it);
  3. baseline: the load pauses until no connection is open and only the
     current generation's workers run; RSS, RssAnon and fd counts of the
     master and the workers are taken;
  4. soak: --duration seconds at that rate, SIGHUP every --reload-every s;
  5. end: the load pauses as in 3, the same figures are taken; SIGTERM.
  Passes when nothing failed, the exit code is 0, every fd count is what it
  was and the RSS of the master and of the whole tree are within 1 %.

Sessions mode (--sessions N, used by scripts/memcheck.sh): no peak, no
baseline; N verifying sessions unthrottled (and resets beside them), one
reload after half of them, then SIGTERM; passes when nothing failed and
the exit code is 0.

    cargo build --release && scripts/soak.py --duration 1800
    scripts/soak.py --duration 60            # a short run
    scripts/soak.py --sessions 3000 --wrapper "valgrind --log-file=vg.%p"

Prints `FIGURE ...` lines and a final `soak: PASS|FAIL ...` line; --json
writes every figure to a file. Only loopback is used.
"""
import argparse
import codecs
import json
import os
import random
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BIN = os.path.join(HERE, "..", "target", "release", "rot13d")


def rot13(b):
    return codecs.encode(b.decode("latin1"), "rot13").encode("latin1")


def now():
    return time.monotonic()


def read_to_eof(s):
    """Everything `s` sends until it closes."""
    out = bytearray()
    while True:
        x = s.recv(65536)
        if not x:
            return bytes(out)
        out += x


# --------------------------------------------------------------------------
# The daemon and what /proc says about it.

def proc_status(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            rest = s[s.rindex(")") + 2:].split()
            if int(rest[1]) == pid and rest[0] not in "ZX":
                out.append(int(d))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return sorted(out)


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        rest = s[s.rindex(")") + 2:].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


class Daemon:
    def __init__(self, binary, wrapper, workers, start_timeout):
        self.dir = tempfile.mkdtemp(prefix="rot13d-soak-")
        self.conf = os.path.join(self.dir, "rot13d.toml")
        with open(self.conf, "w") as f:
            f.write("[server]\nidle_timeout = 2\nwrite_timeout = 3\n"
                    "[admin]\nlisten = \"127.0.0.1:0\"\n")
        self.logpath = os.path.join(self.dir, "log")
        self.logf = open(self.logpath, "w")
        cmd = shlex.split(wrapper) + [os.path.abspath(binary), "--listen", "127.0.0.1:0", "-c", self.conf,
                                      "--workers", str(workers)]
        self.workers = workers
        self.p = subprocess.Popen(cmd, stderr=self.logf, stdout=subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL, cwd=self.dir)
        self.pid = self.p.pid
        deadline = now() + start_timeout
        self.port = self.admin = None
        while now() < deadline:
            t = self.log()
            m = re.search(r"listening addr=127\.0\.0\.1:(\d+) kind=rot13", t)
            a = re.search(r"listening addr=127\.0\.0\.1:(\d+) kind=admin", t)
            if m and a and " ready " in t:
                self.port, self.admin = int(m.group(1)), int(a.group(1))
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"rot13d did not start:\n{self.log()}")

    def log(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def count(self, pattern):
        return len(re.findall(pattern, self.log()))

    def metrics(self):
        s = socket.create_connection(("127.0.0.1", self.admin), timeout=10)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = read_to_eof(s)
        s.close()
        m = {}
        for line in body.decode("latin1").split("\r\n\r\n", 1)[-1].splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                k = k.split("{")[0]
                m[k] = m.get(k, 0) + float(v)
        return m

    def processes(self):
        return [self.pid] + children(self.pid)

    def sample(self):
        ws = children(self.pid)
        return {
            "master_rss": proc_status(self.pid, "VmRSS:"),
            "master_anon": proc_status(self.pid, "RssAnon:"),
            "master_fds": fd_count(self.pid),
            "workers": len(ws),
            "workers_rss": sum(proc_status(w, "VmRSS:") for w in ws),
            "workers_anon": sum(proc_status(w, "RssAnon:") for w in ws),
            "workers_fds": sum(fd_count(w) for w in ws),
        }

    def reload(self, timeout):
        n = self.count(r" reloaded ")
        self.p.send_signal(signal.SIGHUP)
        deadline = now() + timeout
        while self.count(r" reloaded ") <= n:
            if now() > deadline:
                raise SystemExit(f"no reload within {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def quiet(self, timeout):
        """Waits until no connection is open and only the current workers run."""
        deadline = now() + timeout
        while now() < deadline:
            try:
                m = self.metrics()
            except OSError:
                m = {}
            if m.get("rot13d_connections_open", 1) == 0 and len(children(self.pid)) == self.workers:
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout):
        self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            for w in children(self.pid):
                os.kill(w, signal.SIGKILL)
            self.p.kill()
            self.p.wait()
            return None


# --------------------------------------------------------------------------
# Clients.

class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.n = {}
        self.failures = []

    def add(self, k, v=1):
        with self.lock:
            self.n[k] = self.n.get(k, 0) + v

    def fail(self, what):
        with self.lock:
            self.n["failed"] = self.n.get("failed", 0) + 1
            if len(self.failures) < 20:
                self.failures.append(what)

    def get(self, k):
        with self.lock:
            return self.n.get(k, 0)


def make_text(seed, n):
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        k = rng.randint(0, 200)
        out += bytes(rng.choice(b"abcxyzABCXYZ 0189\r\t\x00\xff") for _ in range(k)) + b"\n"
    return bytes(out[:n])


# Lines of random length and bytes, made once (generating them per session
# would make the generator, not the daemon, the limit).
TEXT = make_text(7, 1 << 20)
TEXT_ROT = rot13(TEXT)


def lines(rng, n):
    """n bytes of TEXT from a random offset, and their answer."""
    at = rng.randrange(len(TEXT) - n)
    return TEXT[at:at + n], TEXT_ROT[at:at + n]


def verify(port, rng, tally):
    data, want = lines(rng, rng.randint(1, 20000))
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as e:
        tally.add("refused")
        tally.fail(f"verify connect: {e}")
        return
    try:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = read_to_eof(c)
        if got != want:
            tally.add("cut")
            tally.fail(f"verify: {len(got)} bytes of answer to {len(data)}")
        else:
            tally.add("verify")
            tally.add("lines", data.count(b"\n"))
    except OSError as e:
        tally.add("cut")
        tally.fail(f"verify: {e}")
    finally:
        c.close()


def reset(port, rng, tally):
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(lines(rng, rng.randint(1, 100000))[0])
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        tally.add("reset")
    except OSError as e:
        tally.fail(f"reset: {e}")


def slow(port, rng, tally, stop):
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.setblocking(False)
        chunk = lines(rng, 65536)[0]
        t0 = now()
        while now() - t0 < 6 and not stop.is_set():
            try:
                c.send(chunk)
            except BlockingIOError:
                time.sleep(0.05)
            except OSError:
                break
        c.close()
        tally.add("slow")
    except OSError as e:
        tally.fail(f"slow: {e}")


def idle(port, tally):
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(b"partial")
        got = read_to_eof(c)
        c.close()
        if got != b"cnegvny":
            tally.fail(f"idle: {got!r}")
        else:
            tally.add("idle")
    except OSError as e:
        tally.fail(f"idle: {e}")


class Load:
    """Paced verify/reset threads plus background slow and idle clients."""

    def __init__(self, port, threads=5, seed=1):
        self.port = port
        self.tally = Tally()
        self.stop = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self.rate = 0.0  # sessions per second for all paced threads; 0 = unthrottled
        self.sessions = 0
        self.lock = threading.Lock()
        self.busy = 0
        self.ths = []
        for i in range(threads):
            self.ths.append(threading.Thread(target=self.paced, args=(i, seed + i, threads), daemon=True))
        for i in range(2):
            self.ths.append(threading.Thread(target=self.background, args=("slow", seed + 100 + i), daemon=True))
            self.ths.append(threading.Thread(target=self.background, args=("idle", seed + 200 + i), daemon=True))
        for t in self.ths:
            t.start()

    def enter(self):
        self.running.wait()
        with self.lock:
            self.busy += 1

    def leave(self):
        with self.lock:
            self.busy -= 1

    def paced(self, i, seed, threads):
        rng = random.Random(seed)
        nxt = now()
        while not self.stop.is_set():
            if i == 0 and self.tally.get("reset") > self.tally.get("verify") / 3 + 10:
                # Resets are cheap: at most one for three verifying sessions
                # keeps the mix the same whatever the daemon's speed.
                self.stop.wait(0.005)
                continue
            self.enter()
            try:
                if i == 0:
                    reset(self.port, rng, self.tally)
                else:
                    verify(self.port, rng, self.tally)
                with self.lock:
                    self.sessions += 1
            finally:
                self.leave()
            if self.rate > 0:
                nxt = max(nxt + threads / self.rate, now() - 1.0)
                d = nxt - now()
                if d > 0:
                    self.stop.wait(d)
            else:
                nxt = now()

    def background(self, kind, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            self.enter()
            try:
                if kind == "slow":
                    slow(self.port, rng, self.tally, self.stop)
                else:
                    idle(self.port, self.tally)
            finally:
                self.leave()

    def pause(self, timeout=30):
        """Stops starting sessions; waits until the running ones ended."""
        self.running.clear()
        deadline = now() + timeout
        while now() < deadline:
            with self.lock:
                if self.busy == 0:
                    return True
            time.sleep(0.05)
        return False

    def resume(self):
        self.running.set()

    def count(self):
        with self.lock:
            return self.sessions

    def finish(self):
        self.stop.set()
        self.running.set()
        for t in self.ths:
            t.join(30)


# --------------------------------------------------------------------------

def figure(figs, name, text, value=None):
    print(f"FIGURE {name}: {text}", flush=True)
    figs[name] = value if value is not None else text


def mib(b):
    return f"{b / 1048576:.2f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.environ.get("ROT13D", DEFAULT_BIN))
    ap.add_argument("--wrapper", default="", help="command the daemon runs under (e.g. valgrind ...)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=60, help="soak seconds (default 60)")
    ap.add_argument("--peak", type=float, default=20, help="seconds to measure the peak rate")
    ap.add_argument("--rate", type=float, default=0, help="sessions/s instead of half the peak")
    ap.add_argument("--reload-every", type=float, default=30)
    ap.add_argument("--sessions", type=int, default=0, help="sessions mode: this many, one reload halfway")
    ap.add_argument("--start-timeout", type=float, default=30)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    figs = {"args": vars(args)}
    d = Daemon(args.binary, args.wrapper, args.workers, args.start_timeout)
    load = Load(d.port)
    ok = True
    cpu0 = {p: cpu_seconds(p) for p in d.processes()}
    t_start = now()
    try:
        if args.sessions:
            reloaded = False
            while load.tally.get("verify") < args.sessions:
                if not reloaded and load.tally.get("verify") >= args.sessions // 2:
                    d.reload(120)
                    reloaded = True
                time.sleep(0.1)
            load.finish()
        else:
            c0, t0 = load.count(), now()
            time.sleep(args.peak)
            peak = (load.count() - c0) / (now() - t0)
            figure(figs, "peak", f"{peak:.0f} sessions/s over {args.peak:.0f} s (verify and reset, unthrottled)", peak)
            load.rate = args.rate or peak / 2
            figure(figs, "rate", f"{load.rate:.0f} sessions/s", load.rate)
            d.reload(60)
            time.sleep(args.reload_every)
            ok &= load.pause()
            ok &= d.quiet(60)
            base = d.sample()
            figure(figs, "start", json.dumps(base), base)
            load.resume()
            t0 = now()
            last_reload = now()
            c0 = load.count()
            series = []
            while now() - t0 < args.duration:
                time.sleep(min(1.0, max(0.0, args.duration - (now() - t0))))
                if now() - last_reload >= args.reload_every:
                    d.reload(60)
                    last_reload = now()
                if not series or now() - series[-1][0] >= 60:
                    s = d.sample()
                    series.append((now(), s))
                    print(f"soak: {now() - t0:5.0f} s, {load.count() - c0} sessions, {load.tally.n}, "
                          f"master {mib(s['master_rss'])} / {s['master_fds']} fds, workers "
                          f"{mib(s['workers_rss'])} / {s['workers_fds']} fds", flush=True)
            soaked = now() - t0
            sessions = load.count() - c0
            ok &= load.pause()
            ok &= d.quiet(60)
            end = d.sample()
            figure(figs, "end", json.dumps(end), end)
            figure(figs, "soak", f"{soaked:.0f} s, {sessions} sessions ({sessions / soaked:.0f}/s), "
                   f"{d.count(r' reloaded ')} reloads", {"seconds": soaked, "sessions": sessions})
            load.finish()
            # RssAnon is reported, not bounded: the master's is ~350 KiB, so
            # one page is more than 1 % of it.
            for k, tol in [("master_rss", 0.01), ("workers_rss", 0.01), ("master_anon", None),
                           ("workers_anon", None), ("master_fds", 0), ("workers_fds", 0)]:
                a, b = base[k], end[k]
                rel = (b - a) / a if a else 0
                within = True if tol is None else b <= a * (1 + tol) if tol else a == b
                figure(figs, f"{k} start->end", f"{a} -> {b} ({rel * 100:+.2f} %){'' if within else ' OUT OF BOUND'}",
                       {"start": a, "end": b})
                ok &= within
            tree = (base["master_rss"] + base["workers_rss"], end["master_rss"] + end["workers_rss"])
            within = tree[1] <= tree[0] * 1.01
            figure(figs, "tree_rss start->end", f"{mib(tree[0])} -> {mib(tree[1])} "
                   f"({(tree[1] - tree[0]) / tree[0] * 100:+.2f} %)", {"start": tree[0], "end": tree[1]})
            ok &= within
    finally:
        load.finish()
        cpu = sum(cpu_seconds(p) - cpu0.get(p, 0) for p in d.processes())
        rc = d.stop(120)
    log = d.log()
    figure(figs, "clients", json.dumps(load.tally.n), load.tally.n)
    figure(figs, "daemon", f"exit {rc}, {log.count(' ERROR ')} ERROR and {log.count(' WARN ')} WARN lines, "
           f"{log.count('panicked')} panics; CPU of the processes alive at the end "
           f"{cpu:.1f} s over {now() - t_start:.0f} s", {"exit": rc})
    if load.tally.failures:
        print("failures:", *load.tally.failures, sep="\n  ")
    ok &= rc == 0 and load.tally.get("failed") == 0 and load.tally.get("verify") > 0 and "panicked" not in log
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figs, f, indent=1)
    print(f"soak: {'PASS' if ok else 'FAIL'} (daemon log: {d.logpath})", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
