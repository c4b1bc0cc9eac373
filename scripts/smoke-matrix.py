#!/usr/bin/env python3
"""Configuration matrix smoke run (not part of CI): for workers 0-3, admin
on/off, each backend (epoll, epoll changelist, poll, select), lanes on/off
and max_connections unset/1, start the release binary on 127.0.0.1:0, check
sequential and concurrent clients byte for byte, reload (SIGHUP), check
again, stop (SIGTERM) and expect exit 0. Prints FAIL lines with the log.

    cargo build --release && scripts/smoke-matrix.py [SEED]

ROT13D overrides the binary. Only loopback is used.
"""
import socket, subprocess, time, re, sys, os, signal, itertools, threading, random, tempfile, codecs
BIN=os.environ.get("ROT13D", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "rot13d"))
def rot13(b): return codecs.encode(b.decode('latin1'),'rot13').encode('latin1')
def roundtrip(port, data, timeout=10):
    c = socket.create_connection(("127.0.0.1",port), timeout=timeout)
    out=[]
    def rd():
        try:
            while True:
                d=c.recv(65536)
                if not d: break
                out.append(d)
        except Exception as e: out.append(("ERR",str(e)))
    t=threading.Thread(target=rd); t.start()
    c.sendall(data); c.shutdown(socket.SHUT_WR); t.join(timeout+2); c.close()
    if any(isinstance(x,tuple) for x in out): return None
    return b"".join(out)
def http(port, path):
    c=socket.create_connection(("127.0.0.1",port), timeout=5)
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    r=b""
    while True:
        d=c.recv(65536)
        if not d: break
        r+=d
    return r
def one(workers, admin, backend, changelist, lanes, maxc):
    d=tempfile.mkdtemp()
    cfg=f"[server]\nworkers = {workers}\n"
    if maxc: cfg+=f"max_connections = {maxc}\n"
    cfg+=f"[reactor]\nbackend = \"{backend}\"\nepoll_changelist = {str(changelist).lower()}\n"
    cfg+=f"[lanes]\nenabled = {str(lanes).lower()}\n"
    if admin: cfg+="[admin]\nlisten = \"127.0.0.1:0\"\n"
    open(d+"/c.toml","w").write(cfg)
    log=open(d+"/log","w")
    p=subprocess.Popen([BIN,"--listen","127.0.0.1:0","--config",d+"/c.toml"],stderr=log)
    name=f"w{workers} admin={admin} {backend} cl={changelist} lanes={lanes} maxc={maxc}"
    try:
        t0=time.time(); port=None; aport=None
        while time.time()-t0<10:
            txt=open(d+"/log").read()
            m=re.search(r"listening addr=127.0.0.1:(\d+) kind=rot13",txt)
            a=re.search(r"listening addr=127.0.0.1:(\d+) kind=admin",txt)
            if m and (not admin or a) and ("ready" in txt or workers==0):
                port=int(m.group(1)); aport=int(a.group(1)) if a else None; break
            time.sleep(0.02)
        if port is None: return name+": no port\n"+open(d+"/log").read()
        def batch(tag):
            errs=[]
            payloads=[b"hello\n", b"abc\ndef", b"x"*100000+b"\n", bytes(random.getrandbits(8) for _ in range(300000)), b""]
            for i,pl in enumerate(payloads):
                got=roundtrip(port,pl)
                want=rot13_model(pl)
                if got!=want: errs.append(f"{tag} seq {i}: got {None if got is None else len(got)} want {len(want)}")
            res=[None]*8
            def w(i):
                pl=(f"conn {i} "*1000+"\n").encode()*3
                res[i]=(roundtrip(port,pl)==rot13_model(pl))
            ts=[threading.Thread(target=w,args=(i,)) for i in range(8)]
            [t.start() for t in ts]; [t.join(20) for t in ts]
            if not all(res): errs.append(f"{tag} concurrent: {res}")
            if aport:
                r=http(aport,"/healthz")
                if b"200" not in r.split(b"\r\n")[0]: errs.append(f"{tag} healthz {r[:40]}")
            return errs
        errs=batch("start")
        p.send_signal(signal.SIGHUP); time.sleep(0.5)
        errs+=batch("reload")
        p.send_signal(signal.SIGTERM)
        try: rc=p.wait(15)
        except subprocess.TimeoutExpired: errs.append("no exit after SIGTERM"); p.kill(); rc=None
        if rc not in (0,None): errs.append(f"exit {rc}")
        if errs: return name+": "+"; ".join(errs)+"\n"+open(d+"/log").read()[-3000:]
        return None
    finally:
        if p.poll() is None: p.kill()
def rot13_model(pl, max_line=16384):
    out=b""
    lines=pl.split(b"\n")
    for i,l in enumerate(lines):
        last = i==len(lines)-1
        while len(l)>max_line:
            out+=rot13(l[:max_line])+b"\n"; l=l[max_line:]
        out+=rot13(l)+(b"" if last else b"\n")
    return out
combos=[]
for workers in [0,1,2,3]:
  for admin in [False,True]:
    for backend,cl in [("epoll",False),("epoll",True),("poll",False),("select",False)]:
      for lanes in [True,False]:
        for maxc in [None,1]:
          combos.append((workers,admin,backend,cl,lanes,maxc))
random.seed(int(sys.argv[1]) if len(sys.argv)>1 else 1)
fails=0
for c in combos:
    r=one(*c)
    if r: fails+=1; print("FAIL", r[:4000]); sys.stdout.flush()
print("done", len(combos), "fails", fails)
