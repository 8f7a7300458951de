#!/usr/bin/env python3
"""REALITY clients side by side: shardray's REALITY outbound and shoes's REALITY client, each
behind a SOCKS5 port, upload to the same sink through the same shardray REALITY (VLESS)
server on loopback. Per client: wall-clock throughput of one bulk stream, and the client
process's CPU seconds per GiB (utime + stime from /proc), best of --runs; then a handshake
rate (sequential connections that each carry one byte through and back).

    perf/reality_client.py --shardray target/release/shardray --shoes $SHOES_BIN

Short by design (the machine is shared): 512 MiB per stream run, 200 connections."""

import argparse
import json
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")
SNI = "reality.test"
SHORT_ID = "6ba85179e30d4fc2"
UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def sink():
    """Reads each connection to its end, answers with the byte count (8 bytes BE)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)

    def serve(conn):
        total = 0
        buf = bytearray(1 << 20)
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            total += n
        conn.sendall(struct.pack(">Q", total))
        conn.close()

    def loop():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1]


def wait_port(port, proc, log):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"exited early:\n{open(log).read()}")
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open:\n{open(log).read()}")


def start(cmd, port, workdir, name):
    log = os.path.join(workdir, f"{name}.log")
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_port(port, proc, log)
    return proc


def socks_connect(port, dest_port):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", dest_port))
    reply = b""
    while len(reply) < 10:
        chunk = s.recv(10 - len(reply))
        if not chunk:
            raise SystemExit("SOCKS reply cut short")
        reply += chunk
    assert reply[1] == 0, reply
    return s


def upload(port, sink_port, total):
    s = socks_connect(port, sink_port)
    block = os.urandom(1 << 16)
    sent = 0
    while sent < total:
        s.sendall(block)
        sent += len(block)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while len(got) < 8:
        chunk = s.recv(8 - len(got))
        if not chunk:
            break
        got += chunk
    s.close()
    assert got and struct.unpack(">Q", got)[0] == sent, (got, sent)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardray", required=True)
    ap.add_argument("--shoes", required=True)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--connections", type=int, default=200)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="reality-perf-")
    keys = subprocess.run([args.shardray, "x25519"], capture_output=True, text=True, check=True).stdout
    private = next(l.split(": ")[1] for l in keys.splitlines() if l.startswith("PrivateKey"))
    public = next(l.split(": ")[1] for l in keys.splitlines() if l.startswith("Password (PublicKey)"))
    sink_port = sink()

    server_port = free_port()
    server = {
        "log": {"loglevel": "warning"},
        "inbounds": [{"tag": "vless-in", "listen": "127.0.0.1", "port": server_port, "protocol": "vless",
                      "settings": {"clients": [{"id": UUID}], "decryption": "none"},
                      "streamSettings": {"network": "raw", "security": "reality", "realitySettings": {
                          "target": "127.0.0.1:9", "serverNames": [SNI], "privateKey": private,
                          "shortIds": [SHORT_ID]}}}],
        "outbounds": [{"tag": "direct", "protocol": "freedom"}],
        "routing": {"rules": [{"type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct"}]},
    }
    path = os.path.join(work, "server.json")
    json.dump(server, open(path, "w"))
    procs = [start([args.shardray, "run", "-c", path, "--shards", "1"], server_port, work, "server")]

    ours_port = free_port()
    ours = {
        "log": {"loglevel": "warning"},
        "inbounds": [{"tag": "socks", "listen": "127.0.0.1", "port": ours_port, "protocol": "socks"}],
        "outbounds": [{"tag": "reality-out", "protocol": "vless",
                       "settings": {"vnext": [{"address": "127.0.0.1", "port": server_port,
                                               "users": [{"id": UUID, "encryption": "none"}]}]},
                       "streamSettings": {"network": "raw", "security": "reality", "realitySettings": {
                           "serverName": SNI, "publicKey": public, "shortId": SHORT_ID}}}],
    }
    path = os.path.join(work, "ours.json")
    json.dump(ours, open(path, "w"))
    procs.append(start([args.shardray, "run", "-c", path, "--shards", "1"], ours_port, work, "ours"))

    shoes_port = free_port()
    shoes = f"""- address: "127.0.0.1:{shoes_port}"
  protocol:
    type: socks
  rules:
    - masks: "0.0.0.0/0"
      action: allow
      client_chain:
        address: "127.0.0.1:{server_port}"
        protocol:
          type: reality
          public_key: "{public}"
          short_id: "{SHORT_ID}"
          sni_hostname: "{SNI}"
          protocol:
            type: vless
            user_id: "{UUID}"
"""
    path = os.path.join(work, "shoes.yaml")
    open(path, "w").write(shoes)
    procs.append(start([args.shoes, "-t", "1", "--no-reload", path], shoes_port, work, "shoes"))

    clients = [("shardray", ours_port, procs[1].pid), ("shoes 0.3.2", shoes_port, procs[2].pid)]
    total = args.mib << 20
    results = {}
    try:
        for name, port, pid in clients:
            upload(port, sink_port, 1 << 20)  # warm up
            best = None
            for _ in range(args.runs):
                c0, s0, t0 = cpu_seconds(pid), cpu_seconds(procs[0].pid), time.perf_counter()
                upload(port, sink_port, total)
                t, c, s = time.perf_counter() - t0, cpu_seconds(pid) - c0, cpu_seconds(procs[0].pid) - s0
                run = (total / t / (1 << 20), c / (total / (1 << 30)), s / (total / (1 << 30)))
                best = run if best is None or run[0] > best[0] else best
            c0, t0 = cpu_seconds(pid), time.perf_counter()
            for _ in range(args.connections):
                s = socks_connect(port, sink_port)
                s.sendall(b"x")
                s.shutdown(socket.SHUT_WR)
                assert s.recv(8) == struct.pack(">Q", 1)
                s.close()
            t, c = time.perf_counter() - t0, cpu_seconds(pid) - c0
            results[name] = best + (args.connections / t, c / args.connections * 1e3)
    finally:
        for p in procs:
            p.kill()
    print(f"{args.mib} MiB per stream run, best of {args.runs}; {args.connections} sequential connections")
    print("| client | MiB/s (one stream) | client CPU s/GiB | server CPU s/GiB | connections/s | client CPU ms/connection |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r[0]:.0f} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.0f} | {r[4]:.2f} |")
    a, b = results["shardray"], results["shoes 0.3.2"]
    ratio = lambda x, y: f"{x / y:.2f}x" if y else "n/a"
    print(f"ratios shardray/shoes: throughput {ratio(a[0], b[0])}, client CPU/GiB {ratio(a[1], b[1])}, "
          f"connections/s {ratio(a[3], b[3])}, client CPU/connection {ratio(a[4], b[4])}")


if __name__ == "__main__":
    main()
