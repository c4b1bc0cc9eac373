#!/usr/bin/env python3
"""Soak run (not part of CI): two workers with an admin listener, short
timeouts, and for DURATION seconds (default 60) a mix of clients: verifying
round trips, clients that send and reset, slow readers that never read,
idle clients with a partial line. Samples the RSS of the process tree every
5 s and counts failures, ERROR and WARN lines.

    cargo build --release && scripts/soak.py [DURATION]

ROT13D overrides the binary. Only loopback is used.
"""
import socket, subprocess, time, re, sys, os, signal, threading, tempfile, random, struct, codecs
BIN=os.environ.get("ROT13D", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "rot13d"))
DUR=float(sys.argv[1]) if len(sys.argv)>1 else 60
d=tempfile.mkdtemp()
open(d+"/c.toml","w").write("[server]\nworkers = 2\nidle_timeout = 2\nwrite_timeout = 3\n[admin]\nlisten = \"127.0.0.1:0\"\n")
log=open(d+"/log","w")
p=subprocess.Popen([BIN,"--listen","127.0.0.1:0","--config",d+"/c.toml"],stderr=log)
port=None
while port is None:
    time.sleep(0.05); t=open(d+"/log").read()
    m=re.search(r"addr=127.0.0.1:(\d+) kind=rot13",t)
    if m and "ready" in t: port=int(m.group(1))
def rot13(b): return codecs.encode(b.decode('latin1'),'rot13').encode('latin1')
def rss():
    pids=[p.pid]+subprocess.run(["pgrep","-P",str(p.pid)],capture_output=True,text=True).stdout.split()
    tot=0
    for x in pids:
        try:
            for l in open(f"/proc/{x}/status"):
                if l.startswith("VmRSS"): tot+=int(l.split()[1])
        except FileNotFoundError: pass
    return tot
stop=False; bad=[]; stats={}
def count(k): stats[k]=stats.get(k,0)+1
def verifier():
    while not stop:
        n=random.randint(1,20000)
        data=bytes(random.choice(b"abcXYZ 019\n") for _ in range(n))
        try:
            c=socket.create_connection(("127.0.0.1",port),timeout=10)
            c.sendall(data); c.shutdown(socket.SHUT_WR)
            r=b""
            while True:
                x=c.recv(65536)
                if not x: break
                r+=x
            c.close()
            if r!=rot13(data): bad.append(("verify",len(r),len(data)))
            count("verify")
        except Exception as e: bad.append(("verify-exc",str(e)))
def rst_closer():
    while not stop:
        try:
            c=socket.create_connection(("127.0.0.1",port),timeout=5)
            c.sendall(b"x"*random.randint(1,100000))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii",1,0)); c.close(); count("rst")
        except Exception as e: bad.append(("rst-exc",str(e)))
def slow_reader():
    while not stop:
        try:
            c=socket.create_connection(("127.0.0.1",port),timeout=5)
            c.setblocking(False)
            t0=time.time()
            while time.time()-t0<4 and not stop:
                try: c.send(b"y"*65536+b"\n")
                except BlockingIOError: time.sleep(0.05)
                except OSError: break
            c.close(); count("slow")
        except Exception as e: bad.append(("slow-exc",str(e)))
def idler():
    while not stop:
        try:
            c=socket.create_connection(("127.0.0.1",port),timeout=5)
            c.sendall(b"partial")
            c.settimeout(6); r=b""
            while True:
                x=c.recv(100)
                if not x: break
                r+=x
            if r!=b"cnegvny": bad.append(("idle",r))
            c.close(); count("idle")
        except Exception as e: bad.append(("idle-exc",str(e)))
ths=[threading.Thread(target=f) for f in [verifier,verifier,rst_closer,slow_reader,idler,idler]]
[t.start() for t in ths]
t0=time.time(); samples=[]
while time.time()-t0<DUR:
    time.sleep(5); samples.append(rss())
stop=True; [t.join(15) for t in ths]
p.send_signal(signal.SIGTERM); rc=p.wait(20)
txt=open(d+"/log").read()
print("rss KiB samples", samples)
print("stats", stats, "bad", len(bad), bad[:5], "exit", rc, "ERROR lines", txt.count("ERROR"), "WARN lines", txt.count("WARN"))
