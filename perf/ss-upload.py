#!/usr/bin/env python3
# Shadowsocks bulk upload, shardray beside sing-box 1.14.4 as the server, in one run: sing-box as
# the client (socks in, shadowsocks out) pushes 2 GiB on 4 connections to a local sink, per
# method, twice each, alternating; prints MB/s and the server's CPU seconds per GB (from
# /proc). Run from the repository root after `cargo build --release -p shardray`:
#   python3 perf/ss-upload.py
import json, os, tempfile, socket, struct, subprocess, sys, threading, time
SB = os.environ.get("SING_BOX_BIN") or subprocess.run(["perf/peers.sh", "sing-box"], capture_output=True, text=True).stdout.split("=", 1)[1].strip()
SR = os.environ.get("SHARDRAY_BIN", "target/release/shardray")
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
# sink: reads and discards
sink = socket.socket(); sink.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); sink.bind(("127.0.0.1", 0)); sink.listen(64)
SINK = sink.getsockname()[1]
def sink_loop():
    while True:
        c, _ = sink.accept()
        def drain(c):
            while c.recv(1 << 20): pass
            c.close()
        threading.Thread(target=drain, args=(c,), daemon=True).start()
threading.Thread(target=sink_loop, daemon=True).start()
def socks(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"\x05\x01\x00"); s.recv(2)
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", SINK)); s.recv(10)
    return s
def push(port, total, conns):
    buf = os.urandom(1 << 20)
    def one():
        s = socks(port)
        for _ in range(total // conns // len(buf)): s.sendall(buf)
        s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
    ts = [threading.Thread(target=one) for _ in range(conns)]
    t0 = time.time(); [t.start() for t in ts]; [t.join() for t in ts]
    return time.time() - t0
def run(kind, method, password, total=2 << 30, conns=4):
    d = tempfile.mkdtemp(prefix="ss-upload-" + kind + "-"); os.makedirs(d, exist_ok=True)
    sport = free()
    if kind == "shardray":
        cfg = {"log": {"loglevel": "warning", "access": "none"}, "inbounds": [{"tag": "ss", "listen": "127.0.0.1", "port": sport, "protocol": "shadowsocks",
               "settings": {"method": method, "password": password}}],
               "outbounds": [{"tag": "direct", "protocol": "freedom"}],
               "routing": {"rules": [{"type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct"}]}}
        json.dump(cfg, open(d + "/c.json", "w"))
        server = subprocess.Popen([SR, "run", "-c", d + "/c.json"], stdout=open(d + "/log", "w"), stderr=subprocess.STDOUT)
    else:
        cfg = {"log": {"level": "warn"}, "inbounds": [{"type": "shadowsocks", "listen": "127.0.0.1", "listen_port": sport, "method": method, "password": password}],
               "outbounds": [{"type": "direct"}]}
        json.dump(cfg, open(d + "/c.json", "w"))
        server = subprocess.Popen([SB, "run", "-c", d + "/c.json"], stdout=open(d + "/log", "w"), stderr=subprocess.STDOUT)
    wait(sport)
    cport = free()
    ccfg = {"log": {"level": "warn"}, "inbounds": [{"type": "socks", "listen": "127.0.0.1", "listen_port": cport}],
            "outbounds": [{"type": "shadowsocks", "server": "127.0.0.1", "server_port": sport, "method": method, "password": password}]}
    json.dump(ccfg, open(d + "/client.json", "w"))
    client = subprocess.Popen([SB, "run", "-c", d + "/client.json"], stdout=open(d + "/clog", "w"), stderr=subprocess.STDOUT)
    wait(cport)
    push(cport, 256 << 20, conns)  # warm-up
    c0 = cpu(server.pid); el = push(cport, total, conns); c1 = cpu(server.pid)
    client.kill(); server.kill(); client.wait(); server.wait()
    gb = total / 1e9
    print("%-9s %-24s %6.0f MB/s  server CPU %.2f s/GB" % (kind, method, total / el / 1e6, (c1 - c0) / gb), flush=True)
for method, pw in [("aes-128-gcm", "perf password"), ("2022-blake3-aes-128-gcm", "AAECAwQFBgcICQoLDA0ODw==")]:
    for kind in ["shardray", "sing-box", "shardray", "sing-box"]:
        run(kind, method, pw)
