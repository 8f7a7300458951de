#!/usr/bin/env python3
# XTLS Vision download, shardray beside sing-box 1.14.4 as the Vision server, in one run: sing-box
# as the client (socks in, VLESS + xtls-rprx-vision over TLS out) downloads 2 GiB of inner TLS 1.3
# (a local Python TLS server that sends and closes) on 4 connections, twice each, alternating;
# prints MB/s and the server's CPU seconds per GB (from /proc). Once the inner handshake is
# through, both servers drop the outer TLS: shardray splices, sing-box copies. Run from the
# repository root after `cargo build --release -p shardray`:
#   python3 perf/vision-download.py
import json, os, tempfile, socket, ssl, struct, subprocess, threading, time
SB = os.environ.get("SING_BOX_BIN") or subprocess.run(["perf/peers.sh", "sing-box"], capture_output=True, text=True).stdout.split("=", 1)[1].strip()
SR = os.environ.get("SHARDRAY_BIN", "target/release/shardray")
UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"
D = tempfile.mkdtemp(prefix="vision-download-")
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-days", "2",
                "-keyout", D + "/key.pem", "-out", D + "/cert.pem"], check=True, capture_output=True)
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
# The inner TLS 1.3 server: reads an 8-byte length, sends that many bytes, closes.
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.minimum_version = ssl.TLSVersion.TLSv1_3
sctx.load_cert_chain(D + "/cert.pem", D + "/key.pem")
src = socket.socket(); src.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); src.bind(("127.0.0.1", 0)); src.listen(64)
SRC = src.getsockname()[1]
CHUNK = os.urandom(1 << 20)
def src_loop():
    while True:
        c, _ = src.accept()
        def serve(c):
            try:
                t = sctx.wrap_socket(c, server_side=True)
                n = struct.unpack(">Q", t.recv(8))[0]
                while n > 0:
                    k = min(n, len(CHUNK)); t.sendall(CHUNK[:k]); n -= k
                t.close()
            except OSError: c.close()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
threading.Thread(target=src_loop, daemon=True).start()
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
cctx.minimum_version = ssl.TLSVersion.TLSv1_3
def fetch(port, n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"\x05\x01\x00"); s.recv(2)
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", SRC)); s.recv(10)
    t = cctx.wrap_socket(s, server_hostname="localhost")
    t.sendall(struct.pack(">Q", n))
    got = 0
    while got < n:
        b = t.recv(1 << 20)
        if not b: break
        got += len(b)
    t.close()
    if got != n: raise SystemExit("short download: %d of %d" % (got, n))
def pull(port, total, conns):
    ts = [threading.Thread(target=fetch, args=(port, total // conns)) for _ in range(conns)]
    t0 = time.time(); [t.start() for t in ts]; [t.join() for t in ts]
    return time.time() - t0
TOTAL = int(os.environ.get("VISION_TOTAL_MB", "2048")) << 20
def run(kind, total=TOTAL, conns=4):
    d = tempfile.mkdtemp(prefix=kind + "-", dir=D)
    sport = free()
    if kind == "shardray":
        cfg = {"log": {"loglevel": "warning", "access": "none"}, "inbounds": [{"tag": "vision", "listen": "127.0.0.1", "port": sport, "protocol": "vless",
               "settings": {"decryption": "none", "clients": [{"id": UUID, "flow": "xtls-rprx-vision"}]},
               "streamSettings": {"security": "tls", "tlsSettings": {"certificates": [{"certificateFile": D + "/cert.pem", "keyFile": D + "/key.pem"}]}}}],
               "outbounds": [{"tag": "direct", "protocol": "freedom"}],
               "routing": {"rules": [{"type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct"}]}}
        json.dump(cfg, open(d + "/c.json", "w"))
        server = subprocess.Popen([SR, "run", "-c", d + "/c.json"], stdout=open(d + "/log", "w"), stderr=subprocess.STDOUT)
    else:
        cfg = {"log": {"level": "warn"}, "inbounds": [{"type": "vless", "listen": "127.0.0.1", "listen_port": sport,
               "users": [{"uuid": UUID, "flow": "xtls-rprx-vision"}],
               "tls": {"enabled": True, "certificate_path": D + "/cert.pem", "key_path": D + "/key.pem"}}],
               "outbounds": [{"type": "direct"}]}
        json.dump(cfg, open(d + "/c.json", "w"))
        server = subprocess.Popen([SB, "run", "-c", d + "/c.json"], stdout=open(d + "/log", "w"), stderr=subprocess.STDOUT)
    wait(sport)
    cport = free()
    ccfg = {"log": {"level": "warn"}, "inbounds": [{"type": "socks", "listen": "127.0.0.1", "listen_port": cport}],
            "outbounds": [{"type": "vless", "server": "127.0.0.1", "server_port": sport, "uuid": UUID, "flow": "xtls-rprx-vision",
                           "tls": {"enabled": True, "insecure": True, "server_name": "localhost"}}]}
    json.dump(ccfg, open(d + "/client.json", "w"))
    client = subprocess.Popen([SB, "run", "-c", d + "/client.json"], stdout=open(d + "/clog", "w"), stderr=subprocess.STDOUT)
    wait(cport)
    pull(cport, min(256 << 20, total // 4), conns)  # warm-up
    c0 = cpu(server.pid); el = pull(cport, total, conns); c1 = cpu(server.pid)
    client.kill(); server.kill(); client.wait(); server.wait()
    gb = total / 1e9
    print("%-9s %6.0f MB/s  server CPU %.2f s/GB" % (kind, total / el / 1e6, (c1 - c0) / gb), flush=True)
for kind in ["shardray", "sing-box", "shardray", "sing-box"]:
    run(kind)
