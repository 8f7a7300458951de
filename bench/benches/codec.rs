//! Plaintext request header decodes (VLESS, Trojan, SOCKS5, HTTP proxy heads) and WebSocket
//! frames (unframe and unmask, encode), each next to a copy of the same bytes as the baseline.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use shardray_wire::addr::{Address, Destination};
use shardray_wire::{http, socks, trojan, vless};
use uuid::Uuid;

fn ipv4() -> Address {
    Address::Ip(IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)))
}

fn domain() -> Address {
    Address::Domain("www.example.com".into())
}

/// Times `decode` on `bytes` and, beside it, a copy of the same bytes into a stack buffer.
fn decode_and_baseline<T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> T,
) {
    group.bench_function(format!("decode/{name}"), |b| b.iter(|| black_box(decode(black_box(bytes)))));
    group.bench_function(format!("copy_baseline/{name}"), |b| {
        let mut dst = [0u8; 512];
        b.iter(|| {
            let src = black_box(bytes);
            dst[..src.len()].copy_from_slice(src);
            black_box(&dst);
        })
    });
}

// === VLESS ===

fn vless_bytes(addr: Address) -> Vec<u8> {
    let header = vless::RequestHeader {
        user: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        flow: String::new(),
        command: vless::Command::Tcp,
        destination: Some(Destination { addr, port: 443 }),
    };
    let mut out = Vec::new();
    header.encode(&mut out);
    out
}

fn vless_decode(c: &mut Criterion) {
    let cases = [("ipv4", vless_bytes(ipv4())), ("domain", vless_bytes(domain()))];
    let mut group = c.benchmark_group("vless_header");
    group.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for (name, bytes) in &cases {
        // Check the bytes decode, and decode completely, before timing them.
        let mut check = bytes.as_slice();
        vless::RequestHeader::decode(&mut check).expect("encoded header decodes");
        assert!(check.is_empty(), "decode consumed the whole header");
        decode_and_baseline(&mut group, name, bytes, |mut buf| vless::RequestHeader::decode(&mut buf));
    }
    group.finish();
}

// === Trojan ===

fn trojan_bytes(addr: Address) -> Vec<u8> {
    let request = trojan::Request {
        key: trojan::password_key("correct horse battery staple"),
        command: trojan::Command::Connect,
        destination: Destination { addr, port: 443 },
    };
    let mut out = Vec::new();
    request.encode(&mut out);
    out
}

fn trojan_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("trojan_header");
    for (name, bytes) in [("ipv4", trojan_bytes(ipv4())), ("domain", trojan_bytes(domain()))] {
        let mut check = bytes.as_slice();
        trojan::Request::decode(&mut check).expect("encoded request decodes");
        assert!(check.is_empty(), "decode consumed the whole request");
        // The server flow: peek the key (to look the user up), then decode.
        decode_and_baseline(&mut group, name, &bytes, |mut buf| {
            black_box(trojan::Request::peek_key(buf).is_ok());
            trojan::Request::decode(&mut buf)
        });
    }
    group.finish();
}

// === SOCKS5 ===

fn socks_bytes(addr: Address) -> Vec<u8> {
    // A greeting offering "no auth" and "password", then a CONNECT request, as one client flight.
    let mut out = Vec::new();
    socks::encode_greeting(&[socks::method::NO_AUTH, socks::method::PASSWORD], &mut out);
    socks::Request { command: socks::Command::Connect, destination: Destination { addr, port: 443 } }.encode(&mut out);
    out
}

fn socks_greeting_then_request(mut buf: &[u8]) -> Result<socks::Request, socks::SocksError> {
    match socks::Greeting::decode(&mut buf)? {
        socks::Greeting::Socks5 { methods } => {
            black_box(socks::select_method(methods, false));
        }
        socks::Greeting::Socks4(_) => unreachable!("a SOCKS5 greeting"),
    }
    socks::Request::decode(&mut buf)
}

fn socks_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("socks5_header");
    for (name, bytes) in [("ipv4", socks_bytes(ipv4())), ("domain", socks_bytes(domain()))] {
        socks_greeting_then_request(&bytes).expect("encoded greeting and request decode");
        decode_and_baseline(&mut group, name, &bytes, socks_greeting_then_request);
    }
    group.finish();
}

// === HTTP proxy heads ===

const HTTP_CONNECT: &[u8] = b"CONNECT www.example.com:443 HTTP/1.1\r\n\
Host: www.example.com:443\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Proxy-Connection: keep-alive\r\n\
\r\n";

const HTTP_ABSOLUTE: &[u8] = b"GET http://www.example.com/index.html?q=1 HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate\r\n\
Proxy-Connection: keep-alive\r\n\
Upgrade-Insecure-Requests: 1\r\n\
\r\n";

fn http_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("http_head");
    for (name, bytes, kind) in [
        ("connect", HTTP_CONNECT, http::RequestKind::Connect),
        ("absolute_uri", HTTP_ABSOLUTE, http::RequestKind::Forward),
    ] {
        let mut forward = Vec::with_capacity(1024);
        let head = http::RequestHead::parse(bytes, &mut forward).expect("head parses");
        assert_eq!((head.kind, head.head_len), (kind, bytes.len()));
        // The rewritten head (absolute URI) goes into a Vec reused across requests.
        let forward = std::cell::RefCell::new(forward);
        decode_and_baseline(&mut group, name, bytes, |buf| http::RequestHead::parse(buf, &mut forward.borrow_mut()));
    }
    group.finish();
}

// === WebSocket frames ===

/// Frames of `len` bytes: the client's masked frame unframed and unmasked in place (what a
/// server does per read), and a frame encoded (unmasked, what the server writes), each beside
/// a copy of the same bytes; throughput in bytes.
fn websocket_frames(c: &mut Criterion) {
    use shardray_wire::websocket::{encode_frame, opcode, Deframer};
    let mut group = c.benchmark_group("websocket_frame");
    for len in [1_400usize, 16_384, 65_536] {
        group.throughput(criterion::Throughput::Bytes(len as u64));
        let payload = vec![0xa5u8; len];
        let mut framed = Vec::with_capacity(len + 14);
        encode_frame(opcode::BINARY, &payload, Some([1, 2, 3, 4]), &mut framed);
        let mut work = framed.clone();
        group.bench_function(format!("unframe_unmask/{len}"), |b| {
            let mut d = Deframer::new(true);
            b.iter(|| {
                work.copy_from_slice(&framed);
                black_box(d.unframe(black_box(&mut work)).expect("a good frame"));
            })
        });
        let mut out = Vec::with_capacity(len + 14);
        group.bench_function(format!("encode/{len}"), |b| {
            b.iter(|| {
                out.clear();
                encode_frame(opcode::BINARY, black_box(&payload), None, &mut out);
                black_box(&out);
            })
        });
        group.bench_function(format!("copy_baseline/{len}"), |b| {
            b.iter(|| {
                work.copy_from_slice(black_box(&framed));
                black_box(&work);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, vless_decode, trojan_decode, socks_decode, http_decode, websocket_frames);
criterion_main!(benches);
