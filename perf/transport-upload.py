#!/usr/bin/env python3
# VLESS bulk upload over WebSocket and over gRPC, shardray beside sing-box 1.14.4 as the
# server, in one run: sing-box as the client (socks in, vless out over the transport) pushes
# 1 GiB on 4 connections to a local sink (over gRPC the 4 sessions share one HTTP/2
# connection), per transport, twice each, alternating; prints MB/s and the server's CPU
# seconds per GB (from /proc). Run from the repository root after
# `cargo build --release -p shardray`:
#   python3 perf/transport-upload.py [ws] [grpc]
import json, os, tempfile, socket, struct, subprocess, sys, threading, time
SB = os.environ.get("SING_BOX_BIN") or subprocess.run(["perf/peers.sh", "sing-box"], capture_output=True, text=True).stdout.split("=", 1)[1].strip()
SR = os.environ.get("SHARDRAY_BIN", "target/release/shardray")
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
        s.shutdown(socket.SHUT_WR)
        try: s.recv(1)
        except OSError: pass
        s.close()
    ts = [threading.Thread(target=one) for _ in range(conns)]
    t0 = time.time(); [t.start() for t in ts]; [t.join() for t in ts]
    return time.time() - t0
def run(kind, transport, total=1 << 30, conns=4):
    d = tempfile.mkdtemp(prefix="transport-upload-" + kind + "-")
    sport = free()
    if kind == "shardray":
        stream = {"network": "ws", "wsSettings": {"path": "/p"}} if transport == "ws" else \
                 {"network": "grpc", "grpcSettings": {"serviceName": "p"}}
        cfg = {"log": {"loglevel": "warning", "access": "none"}, "inbounds": [{"tag": "in", "listen": "127.0.0.1", "port": sport,
               "protocol": "vless", "settings": {"clients": [{"id": UUID}], "decryption": "none"}, "streamSettings": stream}],
               "outbounds": [{"tag": "direct", "protocol": "freedom"}],
               "routing": {"rules": [{"type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct"}]}}
        json.dump(cfg, open(d + "/c.json", "w"))
        server = subprocess.Popen([SR, "run", "-c", d + "/c.json", "--shards", "2"], stdout=open(d + "/log", "w"), stderr=subprocess.STDOUT)
    else:
        cfg = {"log": {"level": "warn"}, "inbounds": [{"type": "vless", "listen": "127.0.0.1", "listen_port": sport,
               "users": [{"uuid": UUID}], "transport": sb_transport(transport)}], "outbounds": [{"type": "direct"}]}
        json.dump(cfg, open(d + "/c.json", "w"))
        server = subprocess.Popen([SB, "run", "-c", d + "/c.json"], stdout=open(d + "/log", "w"), stderr=subprocess.STDOUT)
    wait(sport)
    cport = free()
    ccfg = {"log": {"level": "warn"}, "inbounds": [{"type": "socks", "listen": "127.0.0.1", "listen_port": cport}],
            "outbounds": [{"type": "vless", "server": "127.0.0.1", "server_port": sport, "uuid": UUID, "transport": sb_transport(transport)}]}
    json.dump(ccfg, open(d + "/client.json", "w"))
    client = subprocess.Popen([SB, "run", "-c", d + "/client.json"], stdout=open(d + "/clog", "w"), stderr=subprocess.STDOUT)
    wait(cport)
    push(cport, 128 << 20, conns)  # warm-up
    c0 = cpu(server.pid); el = push(cport, total, conns); c1 = cpu(server.pid)
    client.kill(); server.kill(); client.wait(); server.wait()
    gb = total / 1e9
    print("%-9s %-5s %6.0f MB/s  server CPU %.2f s/GB" % (kind, transport, total / el / 1e6, (c1 - c0) / gb), flush=True)
def sb_transport(t):
    return {"type": "ws", "path": "/p"} if t == "ws" else {"type": "grpc", "service_name": "p"}
for transport in sys.argv[1:] or ["ws", "grpc"]:
    for kind in ["shardray", "sing-box", "shardray", "sing-box"]:
        run(kind, transport)
