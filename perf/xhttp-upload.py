#!/usr/bin/env python3
# VLESS bulk upload over XHTTP (stream-one, stream-up and packet-up, h2 over TLS) against plain
# VLESS over TLS, shardray on both ends: a shardray client (dokodemo-door in, VLESS out) and a
# shardray server (VLESS in, freedom out) push BYTES (default 1 GiB) on 4 connections to a
# local sink, per row, RUNS times each (default 2), rows alternating; prints each run's MB/s
# and each process's CPU seconds per GB (from /proc), then the medians with the ratios of
# every XHTTP row to VLESS+TLS. Both rows pay the client process, so the server's CPU per GB
# is the transport's cost. `make perf` runs it as its `xhttp` scenario. No other XHTTP
# implementation runs here, so the peer is plain VLESS+TLS through the same two processes.
# Run from the repository root after `cargo build --release -p shardray`:
#   python3 perf/xhttp-upload.py [tls] [stream-one] [stream-up] [packet-up]
import json, os, tempfile, socket, subprocess, sys, threading, time
SR = os.environ.get("SHARDRAY_BIN", "target/release/shardray")
def size(text):
    # As shardray-bench reads BYTES: a number with an optional KiB, MiB or GiB.
    for suffix, mult in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)):
        if text.endswith(suffix): return int(text[:-len(suffix)]) * mult
    return int(text)
TOTAL = size(os.environ.get("BYTES", "1GiB"))
UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def wait(port):
    for _ in range(200):
        try: socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError: time.sleep(0.05)
    raise SystemExit("no listen on %d" % port)
def cpu(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
sink = socket.socket(); sink.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); sink.bind(("127.0.0.1", 0)); sink.listen(64)
SINK = sink.getsockname()[1]
received = [0]
lock = threading.Lock()
def sink_loop():
    while True:
        c, _ = sink.accept()
        def drain(c):
            while True:
                b = c.recv(1 << 20)
                if not b: break
                with lock: received[0] += len(b)
            c.close()
        threading.Thread(target=drain, args=(c,), daemon=True).start()
threading.Thread(target=sink_loop, daemon=True).start()
# Timed until the sink has every byte: packet-up carries no end of stream to the server (as in
# Xray), so its sessions end only at the relay's timeouts, which are not the transfer's cost.
def push(port, total, conns):
    buf = os.urandom(1 << 20)
    each = max(1, total // conns // len(buf))
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    def one(s):
        for _ in range(each): s.sendall(buf)
    with lock: start = received[0]
    ts = [threading.Thread(target=one, args=(s,)) for s in socks]
    t0 = time.time(); [t.start() for t in ts]; [t.join() for t in ts]
    while True:
        with lock:
            if received[0] - start >= each * conns * len(buf): break
        time.sleep(0.001)
    el = time.time() - t0
    for s in socks: s.close()
    return el
def cert(d):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", d + "/key.pem", "-out", d + "/cert.pem"], check=True, capture_output=True)
def start(d, name, cfg):
    json.dump(cfg, open("%s/%s.json" % (d, name), "w"))
    return subprocess.Popen([SR, "run", "-c", "%s/%s.json" % (d, name), "--shards", "2"],
                            stdout=open("%s/%s.log" % (d, name), "w"), stderr=subprocess.STDOUT)
def run(row, conns=4):
    d = tempfile.mkdtemp(prefix="xhttp-upload-" + row + "-")
    cert(d)
    sport, cport = free(), free()
    tls_in = {"security": "tls", "tlsSettings": {"certificates": [{"certificateFile": d + "/cert.pem", "keyFile": d + "/key.pem"}]}}
    tls_out = {"security": "tls", "tlsSettings": {"serverName": "localhost", "allowInsecure": True}}
    net = {"network": "raw"} if row == "tls" else {"network": "xhttp", "xhttpSettings": {"path": "/x", "mode": row}}
    server = start(d, "server", {"log": {"loglevel": "warning", "access": "none"},
        "inbounds": [{"tag": "in", "listen": "127.0.0.1", "port": sport, "protocol": "vless",
                      "settings": {"clients": [{"id": UUID}], "decryption": "none"}, "streamSettings": dict(net, **tls_in)}],
        "outbounds": [{"tag": "direct", "protocol": "freedom"}],
        "routing": {"rules": [{"type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct"}]}})
    wait(sport)
    client = start(d, "client", {"log": {"loglevel": "warning", "access": "none"},
        "inbounds": [{"tag": "door", "listen": "127.0.0.1", "port": cport, "protocol": "dokodemo-door",
                      "settings": {"address": "127.0.0.1", "port": SINK, "network": "tcp"}}],
        "outbounds": [{"tag": "out", "protocol": "vless", "streamSettings": dict(net, **tls_out),
                       "settings": {"vnext": [{"address": "127.0.0.1", "port": sport, "users": [{"id": UUID, "encryption": "none"}]}]}}]})
    wait(cport)
    push(cport, 64 << 20, conns)  # warm-up
    s0, c0 = cpu(server.pid), cpu(client.pid)
    el = push(cport, TOTAL, conns)
    s1, c1 = cpu(server.pid), cpu(client.pid)
    client.kill(); server.kill(); client.wait(); server.wait()
    gb = TOTAL / 1e9
    name = "VLESS+TLS" if row == "tls" else "VLESS+XHTTP %s (h2, TLS)" % row
    got = (TOTAL / el / 1e6, (s1 - s0) / gb, (c1 - c0) / gb)
    print("| %s | %.0f | %.2f | %.2f |" % ((name,) + got), flush=True)
    return name, got
def median(xs):
    xs = sorted(xs); n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
rows = sys.argv[1:] or ["tls", "stream-one", "stream-up", "packet-up"]
RUNS = int(os.environ.get("RUNS", "2"))
print("| shardray to shardray, each run | MB/s | server CPU s/GB | client CPU s/GB |\n| --- | --- | --- | --- |", flush=True)
results = {}
for _ in range(RUNS):
    for row in rows:
        name, got = run(row)
        results.setdefault(name, []).append(got)
print("\n| median of %d | MB/s | server CPU s/GB | client CPU s/GB | MB/s vs VLESS+TLS | server CPU vs VLESS+TLS |" % RUNS)
print("| --- | --- | --- | --- | --- | --- |")
med = {name: [median([g[i] for g in got]) for i in range(3)] for name, got in results.items()}
base = med.get("VLESS+TLS")
for name, (mbs, scpu, ccpu) in med.items():
    ratio = ("%.2f× | %.2f×" % (mbs / base[0], scpu / base[1])) if base else "| "
    print("| %s | %.0f | %.2f | %.2f | %s |" % (name, mbs, scpu, ccpu, ratio), flush=True)
