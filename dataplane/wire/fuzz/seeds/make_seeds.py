#!/usr/bin/env python3
"""Writes the seed corpus: a few valid inputs per target, so that the fuzzer starts past the
version bytes, checksums and framing switches. Run from this directory; each file is < 1 KiB."""
import os
import struct

def le16(n): return struct.pack('<H', n)
def be16(n): return struct.pack('>H', n)

IPV4_SOCKS = b'\x01\x0a\x00\x00\x01' + be16(80)
DOMAIN_SOCKS = b'\x03\x0bexample.com' + be16(443)
IPV6_SOCKS = b'\x04' + bytes(range(16)) + be16(53)
KEY = b'0123456789abcdef' * 3 + b'01234567'

seeds = {
    'vless_request': [
        b'\x00' + bytes(16) + b'\x00\x01' + be16(443) + b'\x02\x0bexample.com',
        b'\x00' + bytes(16) + b'\x12\x0a\x10xtls-rprx-vision\x01' + be16(80) + b'\x01\x7f\x00\x00\x01',
        b'\x00' + bytes(16) + b'\x00\x03',
    ],
    'trojan_request': [KEY + b'\r\n\x01' + DOMAIN_SOCKS + b'\r\n', KEY + b'\r\n\x03' + IPV6_SOCKS + b'\r\npayload'],
    'trojan_peek_key': [KEY + b'\r\n'],
    'trojan_udp_frame': [IPV4_SOCKS + be16(3) + b'\r\nabc', DOMAIN_SOCKS + be16(0) + b'\r\n'],
    'socks_greeting': [b'\x05\x02\x00\x02', b'\x04\x01' + be16(80) + b'\x00\x00\x00\x01user\x00example.com\x00'],
    'socks_credentials': [b'\x01\x04user\x04pass'],
    'socks_request': [b'\x05\x01\x00' + DOMAIN_SOCKS, b'\x05\x03\x00' + IPV6_SOCKS],
    'socks4_request': [b'\x04\x01' + be16(80) + b'\x0a\x00\x00\x01id\x00', b'\x04\x01' + be16(80) + b'\x00\x00\x00\x01\x00a.b\x00'],
    'socks_udp_header': [b'\x00\x00\x00' + IPV4_SOCKS + b'data'],
    'socks_reply': [b'\x05\x00\x00' + IPV4_SOCKS],
    'http_request': [
        b'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n',
        b'GET http://user@[::1]:8080/x?y HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n'
        b'Proxy-Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello',
        b'POST /p HTTP/1.0\r\nHost: example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n',
    ],
    'http_response': [b'HTTP/1.1 200 Connection established\r\n\r\n', b'HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n'],
    'http_response_forward': [
        b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close, Foo\r\nFoo: bar\r\n\r\nabc',
        b'HTTP/1.0 100 Continue\r\n\r\n',
        b'HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n',
    ],
}

# VMess request header plaintext: version, IV, key, auth, options, padding|security, 0, command, port, address.
def vmess_plain(options, security, command, addr, padding=0):
    p = b'\x01' + b'\x11' * 16 + b'\x22' * 16 + b'\x33' + bytes([options, padding << 4 | security, 0, command])
    if command != 3:
        p += be16(443) + addr
    return p + b'\xaa' * padding

seeds['vmess_request_sealed'] = [
    b'\x80' + le16(len(p)) + p for p in [
        vmess_plain(0x0d, 3, 1, b'\x01\x0a\x00\x00\x01'),
        vmess_plain(0x15, 4, 2, b'\x02\x0bexample.com', padding=5),
        vmess_plain(0x01, 5, 3, b''),
        vmess_plain(0x00, 5, 1, b'\x03' + bytes(16)),
    ]
]
seeds['vmess_response_sealed'] = [b'\x00\x04\x33\x00\x00\x00', b'\x00\x06\x33\x00\x01\x02\xaa\xbb', b'\x02\x04\x33\x00\x00\x00']
seeds['vmess_chunk_sealed'] = [
    bytes([s, o, c, d]) + le16(len(p)) + p
    for (s, o, c, d, p) in [
        (0, 0x0d, 0, 2, b'hello|world'), (1, 0x15, 0, 6, b'abc|' + b'x' * 200), (2, 0x01, 0, 2, b'plain|stream'),
        (2, 0x0d, 1, 10, b'udp|packets'), (2, 0x00, 0, 0, b'raw'), (0, 0x1d, 2, 3, b'mux|chunks'),
    ]
]
seeds['vmess_chunk'] = [b'\x02\x01\x00\x00' + be16(3) + b'abc' + be16(0)]
seeds['ss_chunk_sealed'] = [bytes([m, 7, 0, 0]) + le16(9) + b'abc|defgh' for m in range(7)] + [b'\x80\x01\xff\xff' + le16(1) + b'a']
seeds['ss_classic_request_sealed'] = [
    bytes([m]) + le16(len(h)) + h + le16(len(more)) + more
    for m, h, more in [(0, IPV4_SOCKS + b'GET /', b' HTTP/1.1'), (1, DOMAIN_SOCKS, b'tls'), (2, IPV6_SOCKS + b'x', b''), (3, DOMAIN_SOCKS + b'y', b'z')]
]
# 2022 variable header: address, port, padding length, padding, payload.
def var(addr, padding, payload): return addr + be16(len(padding)) + padding + payload
seeds['ss2022_request_sealed'] = [
    bytes([m, 0, 0, 0x80]) + le16(len(v)) + v + le16(len(more)) + more
    for m, v, more in [
        (0, var(IPV4_SOCKS, b'', b'hello'), b'more'), (0x11, var(DOMAIN_SOCKS, b'\x00' * 3, b''), b''),
        (2, var(IPV6_SOCKS, b'\x00', b'x'), b'y'), (0x10, var(IPV4_SOCKS, b'', b'first'), b''),
    ]
]
seeds['ss2022_response_sealed'] = [
    bytes([m, 0x40, 0, 0]) + le16(len(f)) + f + le16(len(more)) + more for m, f, more in [(0, b'first', b'more'), (1, b'', b'x'), (2, b'ok', b'')]
]

# Targets that open sealed bytes get a few of the right shape (what a client's first packet
# looks like to a wrong key): the fuzzer starts at the lengths that matter, not at empty input.
def noise(n, seed):
    x = seed * 0x9e3779b97f4a7c15 | 1
    out = bytearray()
    for _ in range(n):
        x ^= (x << 13) & (2**64 - 1); x ^= x >> 7; x ^= (x << 17) & (2**64 - 1)
        out.append(x & 0xff)
    return bytes(out)

def gun(data): return b'\x00' + struct.pack('>I', len(data) + 2) + b'\x0a' + bytes([len(data)]) + data
seeds['grpc_hunks'] = [gun(b'hello'), gun(b'') + gun(b'x' * 100), gun(b'ab')[:4]]
utp_syn = b'\x41\x00' + be16(0x1234) + bytes(8) + struct.pack('>I', 0x100000) + be16(1) + be16(0)
dht = b'd1:ad2:id20:' + b'a' * 20 + b'e1:q4:ping1:t2:aa1:y1:qe'
seeds['sniff_datagrams'] = [b'\x02' + utp_syn, b'\x00' + dht, b'\x80' + b'\xc3\x00\x00\x00\x01\x08' + noise(40, 1)]
seeds['socks_auth_reply'] = [b'\x01\x00', b'\x01\x01']
seeds['socks_method_reply'] = [b'\x05\x00', b'\x05\x02', b'\x05\xff']
def vision(command, content, padding): return bytes([command]) + be16(len(content)) + be16(padding) + content + bytes(padding)
seeds['vision_unpad'] = [b'\x07\x40' + b'0123456789abcdef' + vision(0, b'hello', 3) + vision(2, b'', 0) + b'raw',
                         b'\xff\xff' + b'0123456789abcdef' + vision(1, b'x' * 20, 0)]
for t, sizes in [('ss2022_request', [32 + 27 + 18, 16 + 27 + 30]), ('ss2022_request_multi', [32 + 16 + 27 + 18]),
                 ('ss2022_response', [32 + 43 + 18]), ('ss_chunk', [18 + 21]), ('ss_classic_find_user', [32 + 18 + 24]),
                 ('ss_classic_request', [32 + 18 + 24, 16 + 18 + 10])]:
    seeds[t] = [bytes([m]) + noise(n, m + 1) for m in range(3) for n in sizes]
seeds['vmess_find_user'] = [noise(16, 1), noise(16 + 42, 2)]
seeds['vmess_request'] = [noise(16 + 18 + 8 + 60, 3), noise(16 + 18 + 8 + 41 + 16, 4)]
seeds['vmess_response'] = [noise(18 + 20, 5), noise(18 + 4 + 16, 6)]

# XHTTP: two settings bytes (mode and placements; padding), then "METHOD TARGET\nhost\nname: value..".
REFERER = b'Referer: http://x/xh/?x_padding=' + b'X' * 200
seeds['xhttp_request'] = [
    b'\x00\x00GET /xh/abc\n127.0.0.1\n' + REFERER,
    b'\x00\x00POST /xh/abc/3\n127.0.0.1\n' + REFERER + b'\nX-Data-0: aGVs\nX-Data-1: bG8',
    bytes([1 | 1 << 2 | 2 << 4 | 3 << 6, 0x10]) + b'POST /xh?x_session=s1\nexample.com:443\n' + REFERER
    + b'\nX-Seq: 4\nCookie: x_data_0=aGk; other=1',
    b'\x00\x05POST /xh/\n127.0.0.1\nCookie: x_padding=' + b'X' * 150,
    b'\x00\x0bGET /xh/s\n127.0.0.1\nX-Padding: ' + b'a0B9' * 33,
    b'\x00\x00OPTIONS /xh/\n127.0.0.1\nOrigin: http://x\nAccess-Control-Request-Method: POST',
    b'\x03\x00POST /xh/s/0\n127.0.0.1\n' + REFERER,
]

def tls_record(kind, body): return bytes([kind]) + b'\x03\x03' + be16(len(body)) + body
def server_hello(suite):
    ext = be16(0x2b) + be16(2) + be16(0x0304) + be16(0x33) + be16(36) + be16(0x1d) + be16(32) + bytes(range(32))
    body = be16(0x0303) + bytes(range(100, 132)) + b'\x20' + bytes(32) + be16(suite) + b'\x00' + be16(len(ext)) + ext
    return tls_record(0x16, b'\x02' + struct.pack('>I', len(body))[1:] + body)
CCS = tls_record(0x14, b'\x01')
# The first byte is where the fuzz target splits the rest into two reads.
seeds['tls13_server_flight'] = [
    b'\x10' + server_hello(0x1301) + CCS + tls_record(0x17, noise(48, 7)),
    b'\x00' + server_hello(0x1303) + tls_record(0x17, noise(64, 8)),
    b'\x03' + server_hello(0x1302),
    b'\x02' + tls_record(0x15, b'\x02\x28'),
]

for target, inputs in seeds.items():
    os.makedirs(target, exist_ok=True)
    for i, data in enumerate(inputs):
        assert len(data) < 1024
        with open(os.path.join(target, f'seed-{i}'), 'wb') as f:
            f.write(data)
