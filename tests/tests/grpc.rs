//! The gRPC transport (`network` `grpc`) with the real binary on 2 shards: sing-box 1.14.4 as
//! the client of VLESS, Trojan and VMess over it (plain and TLS), byte-exact echoes of up to
//! 4 MiB, several sessions at once over one HTTP/2 connection, exact per-user counters; a
//! wrong service name refused; shardray's own VLESS, Trojan and VMess outbounds against
//! sing-box as the gRPC server (one connection per shard carrying the sessions); UDP over it
//! both ways; the API's forms and share links; keepalive and idle limits; and an
//! HTTP/2 client of our own for what sing-box does not send (`TunMulti`, wrong paths,
//! methods and content types, broken messages).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::singbox::{insecure_tls, trojan_outbound, vless_outbound, vmess_outbound, SingBox};
use shardray_tests::tls::SelfSigned;
use shardray_tests::vless::{payload, request};
use shardray_tests::{
    loopback_api, trojan_config, vless_config, vmess_config, wait_until, Shardray, ALICE, ALICE_PASSWORD,
};

const EMAIL: &str = "alice@example.com";
const UPLINK: &str = "user>>>alice@example.com>>>traffic>>>uplink";
const DOWNLINK: &str = "user>>>alice@example.com>>>traffic>>>downlink";

/// Sizes around the HTTP/2 frame (16 KiB) and window (64 KiB, 1 MiB) edges, up to 4 MiB.
const SIZES: [usize; 9] = [1, 100, 16_384, 16_385, 65_536, 100_000, 1 << 20, 777, 4 << 20];

fn with_api(mut config: Value) -> Value {
    config["api"] = loopback_api(&["StatsService", "HandlerService"]);
    config
}

fn grpc_stream(settings: Value, tls: Option<&SelfSigned>) -> Value {
    let mut stream = match tls {
        Some(cert) => cert.stream_settings("localhost", &["h2"]),
        None => json!({}),
    };
    stream["network"] = json!("grpc");
    stream["grpcSettings"] = settings;
    stream
}

/// Counts the TCP connections it forwards from its own port to `to`; `cut` resets the live
/// ones.
struct CountingForwarder {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl CountingForwarder {
    fn start(to: SocketAddr) -> CountingForwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(Mutex::new(Vec::new()));
        let (count, kept) = (accepted.clone(), live.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(to) else { continue };
                kept.lock().unwrap().push(client.try_clone().unwrap());
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c, mut s) = (client, server);
                std::thread::spawn(move || {
                    let _ = io::copy(&mut c, &mut s);
                    let _ = s.shutdown(Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(Shutdown::Write);
                });
            }
        });
        CountingForwarder { addr, accepted, live }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Breaks every connection it carries, as a dying server or network would.
    fn cut(&self) {
        for conn in self.live.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Sends `data` through sing-box to `dest` (writing on a second thread) and reads as many
/// bytes back.
fn exchange(sb: &SingBox, dest: SocketAddr, data: &[u8]) -> io::Result<Vec<u8>> {
    let stream = sb.connect(dest)?;
    let mut write_half = stream.try_clone()?;
    let data = data.to_vec();
    let len = data.len();
    let writer = std::thread::spawn(move || -> io::Result<()> { write_half.write_all(&data) });
    let mut got = vec![0u8; len];
    let read = (&stream).read_exact(&mut got);
    writer.join().expect("writer thread")?;
    read?;
    Ok(got)
}

/// Echoes of every size through sing-box, then 8 at once; alice's counters must equal the
/// payload exactly, both ways.
fn echoes_and_counters(server: &Shardray, sb: &SingBox) {
    let echo = EchoServer::start();
    let mut total = 0i64;
    for (i, &len) in SIZES.iter().enumerate() {
        let data = payload(len, i as u64);
        let got = exchange(sb, echo.addr(), &data).unwrap_or_else(|e| panic!("{len} bytes: {e}\n{}", sb.log()));
        assert!(got == data, "{len} bytes: {} came back\n{}\n{}", got.len(), sb.log(), server.output());
        total += len as i64;
    }
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let echo = echo.addr();
            s.spawn(move || {
                let data = payload(300_000, 100 + t);
                let got = exchange(sb, echo, &data).unwrap_or_else(|e| panic!("parallel session {t}: {e}"));
                assert!(got == data, "parallel session {t}");
            });
        }
    });
    total += 8 * 300_000;
    let api = ApiClient::connect(server.api.expect("api"));
    let mut last = Default::default();
    let ok = wait_until(Duration::from_secs(5), || {
        last = api.query("user>>>alice@example.com>>>traffic", false);
        last.get(UPLINK) == Some(&total) && last.get(DOWNLINK) == Some(&total)
    });
    assert!(ok, "alice's counters should be {total} both ways, got {last:?}");
}

/// A sing-box client through a counting forwarder to `server`'s inbound `tag`: every
/// session must share one connection.
fn sing_box_through(server: &Shardray, tag: &str, outbound: impl FnOnce(SocketAddr) -> Value) {
    let forwarder = CountingForwarder::start(server.inbound(tag));
    let sb = SingBox::start(outbound(forwarder.addr));
    echoes_and_counters(server, &sb);
    assert_eq!(forwarder.accepted(), 1, "sing-box should carry every session on one connection");
}

#[test]
fn sing_box_vless_over_grpc() {
    let stream = grpc_stream(json!({ "serviceName": "gun" }), None);
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    let forwarder = CountingForwarder::start(server.inbound("vless-in"));
    let mut out = vless_outbound(forwarder.addr, ALICE, None);
    out["transport"] = json!({ "type": "grpc", "service_name": "gun" });
    let sb = SingBox::start(out);
    echoes_and_counters(&server, &sb);
    assert_eq!(forwarder.accepted(), 1, "sing-box should carry every session on one connection");
    // sing-box keeps its idle connection open: that is no live session, and a stop does not
    // wait out the grace period for it.
    let started = std::time::Instant::now();
    let status = server.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(2), "the stop took {:?}", started.elapsed());
}

#[test]
fn sing_box_vless_over_grpc_tls() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let stream = grpc_stream(json!({ "serviceName": "vl.Gun" }), Some(&cert));
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    sing_box_through(&server, "vless-in", |to| {
        let mut out = vless_outbound(to, ALICE, Some(insecure_tls("localhost")));
        out["transport"] = json!({ "type": "grpc", "service_name": "vl.Gun" });
        out
    });
}

#[test]
fn sing_box_trojan_over_grpc_tls() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    // No `alpn`: a gRPC server offers h2 all the same.
    let mut stream = grpc_stream(json!({ "serviceName": "tr" }), Some(&cert));
    stream["tlsSettings"].as_object_mut().unwrap().remove("alpn");
    let config = with_api(trojan_config(
        json!([{ "password": ALICE_PASSWORD, "email": EMAIL }]),
        json!({ "streamSettings": stream }),
    ));
    let server = Shardray::start(&config, 2);
    sing_box_through(&server, "trojan-in", |to| {
        let mut out = trojan_outbound(to, ALICE_PASSWORD, Some(insecure_tls("localhost")));
        out["transport"] = json!({ "type": "grpc", "service_name": "tr" });
        out
    });
}

#[test]
fn sing_box_vmess_over_grpc() {
    let stream = grpc_stream(json!({ "serviceName": "vm" }), None);
    let config = with_api(vmess_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    sing_box_through(&server, "vmess-in", |to| {
        vmess_outbound(to, ALICE, "aes-128-gcm", json!({ "transport": { "type": "grpc", "service_name": "vm" } }))
    });
}

#[test]
fn sing_box_with_the_wrong_service_name_is_refused() {
    let stream = grpc_stream(json!({ "serviceName": "gun" }), None);
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    let mut out = vless_outbound(server.inbound("vless-in"), ALICE, None);
    out["transport"] = json!({ "type": "grpc", "service_name": "other" });
    let sb = SingBox::start(out);
    let echo = EchoServer::start();
    let got = exchange(&sb, echo.addr(), b"hello").unwrap_or_default();
    assert!(got != b"hello", "a stream for another service was served");
    assert!(
        wait_until(Duration::from_secs(5), || server.output().contains("unknown service other")),
        "the refusal should be logged:\n{}",
        server.output()
    );
}

// === shardray's outbounds against sing-box as the gRPC server ===

fn outbound_config(echo: SocketAddr, outbound: Value) -> Value {
    json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService"]),
        "inbounds": [{ "tag": "fwd", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
                       "settings": { "address": echo.ip().to_string(), "port": echo.port(), "network": "tcp" } }],
        "outbounds": [outbound, { "tag": "direct", "protocol": "freedom" }],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    })
}

/// `data` to the dokodemo-door inbound and as many bytes back.
fn plain_exchange(proxy: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut write_half = stream.try_clone().unwrap();
    let data = data.to_vec();
    let mut got = vec![0u8; data.len()];
    let writer = std::thread::spawn(move || write_half.write_all(&data).unwrap());
    let n = (&stream).read(&mut got[..]).unwrap_or(0);
    if n > 0 {
        let _ = (&stream).read_exact(&mut got[n..]);
    } else {
        got.clear();
    }
    writer.join().unwrap();
    got
}

/// Echoes of every size and 8 at once through the outbound `tag`, its counters exact, and
/// at most one connection per shard to the server.
fn outbound_echoes(server: &Shardray, tag: &str, forwarder: &CountingForwarder, log: &dyn Fn() -> String) {
    let proxy = server.inbound("fwd");
    let mut total = 0i64;
    for (i, &len) in SIZES.iter().enumerate() {
        let data = payload(len, i as u64);
        let got = plain_exchange(proxy, &data);
        assert!(got == data, "{len} bytes: got {} back\n{}\n{}", got.len(), log(), server.output());
        total += len as i64;
    }
    std::thread::scope(|s| {
        for t in 0..8u64 {
            s.spawn(move || {
                let data = payload(200_000, 50 + t);
                assert!(plain_exchange(proxy, &data) == data, "parallel session {t}");
            });
        }
    });
    total += 8 * 200_000;
    let api = ApiClient::connect(server.api.unwrap());
    let (up, down) = (format!("outbound>>>{tag}>>>traffic>>>uplink"), format!("outbound>>>{tag}>>>traffic>>>downlink"));
    assert!(
        wait_until(Duration::from_secs(5), || api.get(&up, false).ok() == Some(total)
            && api.get(&down, false).ok() == Some(total)),
        "outbound counters {:?} / {:?}, expected {total}",
        api.get(&up, false),
        api.get(&down, false)
    );
    let conns = forwarder.accepted();
    assert!((1..=2).contains(&conns), "{conns} connections to the server for 2 shards");
}

fn sing_box_grpc_server(inbound: Value, tls: Option<&SelfSigned>, service: &str) -> SingBox {
    let mut inbound = inbound;
    inbound["transport"] = json!({ "type": "grpc", "service_name": service });
    if let Some(cert) = tls {
        inbound["tls"] = json!({ "enabled": true, "server_name": "grpc.example", "alpn": ["h2"],
            "certificate_path": cert.cert_file.to_str().unwrap(), "key_path": cert.key_file.to_str().unwrap() });
    }
    SingBox::serve(inbound)
}

#[test]
fn vless_outbound_over_grpc_to_sing_box() {
    let echo = EchoServer::start();
    let sb = sing_box_grpc_server(
        json!({ "type": "vless", "tag": "vless-in", "users": [{ "name": "u", "uuid": ALICE }] }),
        None,
        "gun",
    );
    let forwarder = CountingForwarder::start(sb.socks);
    let outbound = json!({
        "tag": "vless-out", "protocol": "vless",
        "settings": { "vnext": [{ "address": "127.0.0.1", "port": forwarder.addr.port(),
                                   "users": [{ "id": ALICE, "encryption": "none" }] }] },
        "streamSettings": { "network": "grpc", "grpcSettings": { "serviceName": "gun" } }
    });
    let server = Shardray::start(&outbound_config(echo.addr(), outbound), 2);
    outbound_echoes(&server, "vless-out", &forwarder, &|| sb.log());
    // The connections die: once the shards have seen it (a session opened on a dying
    // connection fails with it, as a grpc-go client's does), the next sessions open new ones.
    let before = forwarder.accepted();
    forwarder.cut();
    let probe = payload(1000, 300);
    assert!(
        wait_until(Duration::from_secs(5), || plain_exchange(server.inbound("fwd"), &probe) == probe),
        "no session got through after the cut\n{}",
        server.output()
    );
    for t in 0..4u64 {
        let data = payload(10_000, 200 + t);
        assert!(plain_exchange(server.inbound("fwd"), &data) == data, "session {t} after the cut\n{}", server.output());
    }
    assert!(forwarder.accepted() > before, "no new connection after the cut");
}

#[test]
fn trojan_outbound_over_grpc_tls_to_sing_box() {
    const PASSWORD: &str = "the trojan server's password";
    let echo = EchoServer::start();
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["grpc.example"]);
    let sb = sing_box_grpc_server(
        json!({ "type": "trojan", "tag": "trojan-in", "users": [{ "name": "u", "password": PASSWORD }] }),
        Some(&cert),
        "tr",
    );
    let forwarder = CountingForwarder::start(sb.socks);
    let outbound = json!({
        "tag": "trojan-out", "protocol": "trojan",
        "settings": { "servers": [{ "address": "127.0.0.1", "port": forwarder.addr.port(), "password": PASSWORD }] },
        "streamSettings": { "network": "grpc", "security": "tls",
            "tlsSettings": { "serverName": "grpc.example", "allowInsecure": true },
            "grpcSettings": { "serviceName": "tr" } }
    });
    let server = Shardray::start(&outbound_config(echo.addr(), outbound), 2);
    outbound_echoes(&server, "trojan-out", &forwarder, &|| sb.log());
}

#[test]
fn vmess_outbound_over_grpc_to_sing_box() {
    let echo = EchoServer::start();
    let sb = sing_box_grpc_server(
        json!({ "type": "vmess", "tag": "vmess-in", "users": [{ "name": "u", "uuid": ALICE, "alterId": 0 }] }),
        None,
        "vm",
    );
    let forwarder = CountingForwarder::start(sb.socks);
    let outbound = json!({
        "tag": "vmess-out", "protocol": "vmess",
        "settings": { "vnext": [{ "address": "127.0.0.1", "port": forwarder.addr.port(),
                                   "users": [{ "id": ALICE, "security": "chacha20-poly1305" }] }] },
        "streamSettings": { "network": "grpc", "grpcSettings": { "serviceName": "vm", "multiMode": false } }
    });
    let server = Shardray::start(&outbound_config(echo.addr(), outbound), 2);
    outbound_echoes(&server, "vmess-out", &forwarder, &|| sb.log());
}

// === an HTTP/2 client of our own ===

mod h2c {
    //! A gun client on `h2` over plain TCP (tokio, current thread).

    use bytes::Bytes;
    use http::{HeaderMap, Request};

    /// What the server answered one request: the head's status and headers, the body, and
    /// the trailers.
    pub struct Answer {
        pub status: u16,
        pub headers: HeaderMap,
        pub body: Vec<u8>,
        pub trailers: Option<HeaderMap>,
    }

    /// Sends one request (`method`, `path`, `content_type`) with `body` and the end of its
    /// stream, and reads the whole answer.
    pub fn call(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let work = async {
                let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                let (client, conn) = h2::client::handshake(tcp).await.map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let mut client = client.ready().await.map_err(|e| e.to_string())?;
                let request = Request::builder()
                    .method(method)
                    .uri(format!("http://127.0.0.1{path}"))
                    .header("content-type", content_type)
                    .header("te", "trailers")
                    .body(())
                    .unwrap();
                let (response, mut send) = client.send_request(request, false).map_err(|e| e.to_string())?;
                send.send_data(Bytes::from(body), true).map_err(|e| e.to_string())?;
                let response = response.await.map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let mut recv = response.into_body();
                let mut got = Vec::new();
                while let Some(chunk) = recv.data().await {
                    let chunk = chunk.map_err(|e| e.to_string())?;
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    got.extend_from_slice(&chunk);
                }
                let trailers = recv.trailers().await.map_err(|e| e.to_string())?;
                Ok(Answer { status, headers, body: got, trailers })
            };
            tokio::time::timeout(std::time::Duration::from_secs(20), work).await.map_err(|_| "timed out".to_owned())?
        })
    }
}

/// One gRPC message carrying `fields` as repeated field 1 (a `MultiHunk`; one field is a `Hunk`).
fn message(fields: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for f in fields {
        body.push(0x0a);
        let mut n = f.len();
        while n >= 0x80 {
            body.push((n as u8) | 0x80);
            n >>= 7;
        }
        body.push(n as u8);
        body.extend_from_slice(f);
    }
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The payload of a stream of gun messages (one field each, as shardray sends them).
fn unframe(mut stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut decoder = shardray_wire::grpc::GunDecoder::new();
    while let Some(piece) = decoder.decode(&mut stream).expect("well-formed gun messages") {
        out.extend_from_slice(piece);
    }
    out
}

fn plain_grpc_server(service: &str) -> Shardray {
    let stream = grpc_stream(json!({ "serviceName": service }), None);
    let mut config = vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream }));
    config["log"] = json!({ "loglevel": "info" });
    Shardray::start(&config, 2)
}

#[test]
fn tun_multi_sessions_from_our_own_client() {
    let server = plain_grpc_server("gun");
    let echo = EchoServer::start();
    // The VLESS request and its payload split over the elements of two MultiHunks.
    let header = request(ALICE, echo.addr());
    let data = payload(70_000, 9);
    let mut body = message(&[&header[..10], &header[10..], &data[..5]]);
    body.extend(message(&[&data[5..40_000], b"", &data[40_000..]]));
    let answer = h2c::call(server.inbound("vless-in"), "POST", "/gun/TunMulti", "application/grpc", body)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.output()));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers.get("content-type").unwrap(), "application/grpc");
    let back = unframe(&answer.body);
    assert_eq!(&back[..2], [0, 0], "VLESS response header");
    assert!(back[2..] == data[..], "{} bytes came back of {}", back.len() - 2, data.len());
    let trailers = answer.trailers.expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
}

#[test]
fn custom_paths_and_refused_requests() {
    // A custom path: `/SERVICE/TUN|MULTI`.
    let server = plain_grpc_server("/my/sample/tun|multi");
    let addr = server.inbound("vless-in");
    let echo = EchoServer::start();
    for path in ["/my/sample/tun", "/my/sample/multi"] {
        let mut body = message(&[&request(ALICE, echo.addr())]);
        body.extend(message(&[b"custom"]));
        let answer = h2c::call(addr, "POST", path, "application/grpc", body).unwrap();
        assert_eq!(unframe(&answer.body), b"\0\0custom", "{path}");
    }
    // As grpc-go answers: 200 with grpc-status 12 for another service or method, 405 for
    // another method, 415 for another content type.
    let cases = [
        ("POST", "/gun/Tun", "application/grpc", 200, "12", "unknown service gun"),
        ("POST", "/my/sample/Tun", "application/grpc", 200, "12", "unknown method Tun for service my/sample"),
        ("GET", "/my/sample/tun", "application/grpc", 405, "13", "expected POST"),
        ("POST", "/my/sample/tun", "application/json", 415, "3", "content-type"),
    ];
    for (method, path, content_type, status, grpc_status, message_part) in cases {
        let answer = h2c::call(addr, method, path, content_type, Vec::new()).unwrap();
        assert_eq!(answer.status, status, "{method} {path} {content_type}");
        assert_eq!(answer.headers.get("grpc-status").unwrap(), grpc_status, "{method} {path}");
        let text = answer.headers.get("grpc-message").unwrap().to_str().unwrap().to_owned();
        assert!(text.contains(message_part), "{method} {path}: {text}");
        assert!(answer.body.is_empty());
    }
    // A broken message (compressed flag) fails its stream with INTERNAL, not the shard.
    let answer = h2c::call(addr, "POST", "/my/sample/tun", "application/grpc", vec![1, 0, 0, 0, 1, 0]).unwrap();
    assert_eq!(answer.status, 200);
    let trailers = answer.trailers.expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "13");
    // Not HTTP/2 at all, or a broken frame (a SETTINGS frame of 5 bytes) after the preface:
    // the connection is closed, and the server still serves.
    let mut broken_frame = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    broken_frame.extend_from_slice(&[0, 0, 5, 4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]);
    for garbage in [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), broken_frame] {
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(&garbage).unwrap();
        let mut sink = Vec::new();
        let _ = raw.read_to_end(&mut sink);
    }
    let mut body = message(&[&request(ALICE, echo.addr())]);
    body.extend(message(&[b"still"]));
    let answer = h2c::call(addr, "POST", "/my/sample/tun", "application/grpc", body).unwrap();
    assert_eq!(unframe(&answer.body), b"\0\0still");
}

// === the API and links ===

const GRPC_CONFIG: &str = "xray.transport.internet.grpc.encoding.Config";

fn grpc_stream_config(
    settings: &shardray_proto::xray::transport::internet::grpc::encoding::Config,
) -> shardray_proto::xray::transport::internet::StreamConfig {
    use shardray_proto::xray::transport::internet::{StreamConfig, TransportConfig};
    StreamConfig {
        protocol_name: "grpc".into(),
        transport_settings: vec![TransportConfig {
            protocol_name: "grpc".into(),
            settings: Some(shardray_tests::api::typed(GRPC_CONFIG, settings)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn an_inbound_added_through_the_api_serves_grpc() {
    use prost::Message;
    use shardray_proto::xray::app::proxyman::command as handler;
    use shardray_proto::xray::app::proxyman::ReceiverConfig;
    use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain, PortList, PortRange};
    use shardray_proto::xray::core::InboundHandlerConfig;
    use shardray_proto::xray::proxy::vless as vless_pb;
    use shardray_proto::xray::transport::internet::grpc::encoding::Config as GrpcConfig;
    use shardray_tests::api::{typed, vless_user};

    let server = Shardray::start(&with_api(vless_config(json!([]), json!({}))), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let port = shardray_tests::singbox::free_port();
    let inbound = |tag: &str, stream| {
        let receiver = ReceiverConfig {
            port_list: Some(PortList { range: vec![PortRange { from: port.into(), to: port.into() }] }),
            listen: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
            stream_settings: Some(stream),
            ..Default::default()
        };
        let proxy = vless_pb::inbound::Config {
            clients: vec![vless_user(EMAIL, ALICE, 0)],
            decryption: "none".into(),
            ..Default::default()
        };
        InboundHandlerConfig {
            tag: tag.into(),
            receiver_settings: Some(typed("xray.app.proxyman.ReceiverConfig", &receiver)),
            proxy_settings: Some(typed("xray.proxy.vless.inbound.Config", &proxy)),
        }
    };
    let add = |i| api.block_on(api.handler().add_inbound(handler::AddInboundRequest { inbound: Some(i) }));

    // A field number the Config does not define is refused, naming it.
    let mut stream = grpc_stream_config(&GrpcConfig { service_name: "api-gun".into(), ..Default::default() });
    let settings = stream.transport_settings[0].settings.as_mut().unwrap();
    settings.value.extend_from_slice(&[0xa0, 0x06, 0x01]); // field 100, varint 1
    let err = add(inbound("bad", stream)).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("100"), "{}", err.message());

    let settings = GrpcConfig { service_name: "api-gun".into(), idle_timeout: 60, ..Default::default() };
    assert!(!settings.encode_to_vec().is_empty());
    add(inbound("grpc-added", grpc_stream_config(&settings))).unwrap();
    let mut out = vless_outbound(SocketAddr::from(([127, 0, 0, 1], port)), ALICE, None);
    out["transport"] = json!({ "type": "grpc", "service_name": "api-gun" });
    let sb = SingBox::start(out);
    let echo = EchoServer::start();
    let data = payload(300_000, 7);
    assert!(exchange(&sb, echo.addr(), &data).unwrap() == data, "{}", server.output());
}

#[test]
fn an_outbound_added_through_the_api_speaks_grpc() {
    use shardray_proto::xray::app::proxyman::command as handler;
    use shardray_proto::xray::app::proxyman::SenderConfig;
    use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain};
    use shardray_proto::xray::common::protocol::ServerEndpoint;
    use shardray_proto::xray::core::OutboundHandlerConfig;
    use shardray_proto::xray::proxy::vless as vless_pb;
    use shardray_proto::xray::transport::internet::grpc::encoding::Config as GrpcConfig;
    use shardray_tests::api::{typed, vless_user};

    let echo = EchoServer::start();
    let sb = sing_box_grpc_server(
        json!({ "type": "vless", "tag": "vless-in", "users": [{ "name": "u", "uuid": ALICE }] }),
        None,
        "api-out",
    );
    let forwarder = CountingForwarder::start(sb.socks);
    let mut config = outbound_config(echo.addr(), json!({ "tag": "first", "protocol": "blackhole" }));
    config["outbounds"] = json!([{ "tag": "first", "protocol": "blackhole" }]);
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let endpoint = ServerEndpoint {
        address: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        port: u32::from(forwarder.addr.port()),
        user: vec![vless_user("", ALICE, 0)],
    };
    let stream = grpc_stream_config(&GrpcConfig { service_name: "api-out".into(), ..Default::default() });
    let outbound = OutboundHandlerConfig {
        tag: "vless-out".into(),
        sender_settings: Some(typed(
            "xray.app.proxyman.SenderConfig",
            &SenderConfig { stream_settings: Some(stream), ..Default::default() },
        )),
        proxy_settings: Some(typed(
            "xray.proxy.vless.outbound.Config",
            &vless_pb::outbound::Config { vnext: Some(endpoint) },
        )),
        ..Default::default()
    };
    let mut client = api.handler();
    api.block_on(client.add_outbound(handler::AddOutboundRequest { outbound: Some(outbound) })).unwrap();
    api.block_on(client.remove_outbound(handler::RemoveOutboundRequest { tag: "first".into() })).unwrap();
    outbound_echoes(&server, "vless-out", &forwarder, &|| sb.log());
}

#[test]
fn links_carry_the_grpc_service() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let mut config = vless_config(
        json!([{ "id": ALICE, "email": EMAIL }]),
        json!({ "streamSettings": grpc_stream(json!({ "serviceName": "my gun" }), None) }),
    );
    config["inbounds"][0]["port"] = json!(8080);
    let mut trojan = trojan_config(
        json!([{ "password": "pw", "email": "t@example.com" }]),
        json!({ "streamSettings": grpc_stream(json!({ "serviceName": "tr", "multiMode": true }), None) }),
    )["inbounds"][0]
        .clone();
    trojan["port"] = json!(8081);
    let mut vmess = vmess_config(
        json!([{ "id": ALICE, "email": "v@example.com" }]),
        json!({ "streamSettings": grpc_stream(json!({ "serviceName": "vm", "multiMode": true }), None) }),
    )["inbounds"][0]
        .clone();
    vmess["port"] = json!(8082);
    config["inbounds"].as_array_mut().unwrap().extend([trojan, vmess]);
    let file = dir.path().join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let (status, out) = shardray_tests::run_cli(&["link", "-c", file.to_str().unwrap(), "--host", "proxy.example"]);
    assert!(status.success(), "{out}");
    for want in [
        format!(
            "vless://{ALICE}@proxy.example:8080?encryption=none&security=none&type=grpc&serviceName=my%20gun&mode=gun\
             #alice%40example.com"
        ),
        "trojan://pw@proxy.example:8081?security=none&type=grpc&serviceName=tr&mode=multi#t%40example.com".to_owned(),
    ] {
        assert!(out.contains(&want), "{want} not in\n{out}");
    }
    let line = out.lines().find(|l| l.starts_with("vmess://")).unwrap_or_else(|| panic!("{out}"));
    let json = base64::engine::general_purpose::STANDARD.decode(&line["vmess://".len()..]).unwrap();
    let link: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!((&link["net"], &link["path"], &link["type"]), (&json!("grpc"), &json!("vm"), &json!("multi")));
}

/// Opens an HTTP/2 connection by hand (preface and empty SETTINGS), then answers nothing;
/// returns how long the server took to close it.
fn silent_http2_client(addr: SocketAddr) -> Duration {
    let started = std::time::Instant::now();
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    raw.write_all(&hello).unwrap();
    let mut sink = [0u8; 4096];
    while let Ok(n) = raw.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    started.elapsed()
}

#[test]
fn unanswered_keepalives_and_idle_connections_are_closed() {
    // A ping every second, an answer due within one.
    let stream = grpc_stream(json!({ "serviceName": "gun", "idle_timeout": 1, "health_check_timeout": 1 }), None);
    let server = Shardray::start(&vless_config(json!([{ "id": ALICE }]), json!({ "streamSettings": stream })), 2);
    let took = silent_http2_client(server.inbound("vless-in"));
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "closed after {took:?}");
    // No keepalive, but a connIdle of 2 s: a connection without streams goes then.
    let stream = grpc_stream(json!({ "serviceName": "gun" }), None);
    let mut config = vless_config(json!([{ "id": ALICE }]), json!({ "streamSettings": stream }));
    config["policy"]["levels"]["0"]["connIdle"] = json!(2);
    let server = Shardray::start(&config, 2);
    let took = silent_http2_client(server.inbound("vless-in"));
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "closed after {took:?}");
}

#[test]
fn sing_box_vless_udp_over_grpc() {
    use shardray_tests::udp::{echo_datagrams, Socks5Udp, UdpEcho};
    let stream = grpc_stream(json!({ "serviceName": "gun" }), None);
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    // sing-box's default packet encoding (XUDP) and plain VLESS UDP, each a stream.
    for encoding in [None, Some("")] {
        let mut out = vless_outbound(server.inbound("vless-in"), ALICE, None);
        out["transport"] = json!({ "type": "grpc", "service_name": "gun" });
        if let Some(e) = encoding {
            out["packet_encoding"] = json!(e);
        }
        let sb = SingBox::start(out);
        let echoes: Vec<UdpEcho> = (0..2).map(|_| UdpEcho::start()).collect();
        let log = || format!("{}\n{}", sb.log(), server.output());
        std::thread::scope(|s| {
            for (i, echo) in echoes.iter().enumerate() {
                let (log, dest, socks) = (&log, echo.addr(), sb.socks);
                s.spawn(move || {
                    let path = Socks5Udp::associate(socks).unwrap();
                    echo_datagrams(&path, dest, None, 300, 40 + i as u64, 8, log)
                });
            }
        });
    }
}

#[test]
fn trojan_outbound_carries_udp_over_grpc_to_sing_box() {
    use shardray_tests::udp::{echo_datagrams, Direct, UdpEcho};
    const PASSWORD: &str = "the trojan server's password";
    let sb = sing_box_grpc_server(
        json!({ "type": "trojan", "tag": "trojan-in", "users": [{ "name": "u", "password": PASSWORD }] }),
        None,
        "tr",
    );
    let echo = UdpEcho::start();
    let config = json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService"]),
        "inbounds": [{ "tag": "door", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
            "settings": { "address": "127.0.0.1", "port": echo.addr().port(), "network": "udp" } }],
        "outbounds": [
            { "tag": "trojan-out", "protocol": "trojan",
              "settings": { "servers": [{ "address": "127.0.0.1", "port": sb.socks.port(), "password": PASSWORD }] },
              "streamSettings": { "network": "grpc", "grpcSettings": { "serviceName": "tr" } } },
            { "tag": "direct", "protocol": "freedom" }
        ],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    });
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let log = || format!("{}\n{}", sb.log(), server.output());
    let door = server.inbound("door");
    let total = echo_datagrams(&Direct::to(door), echo.addr(), Some(door), 500, 3, 8, &log) as i64;
    let (up, down) = ("outbound>>>trojan-out>>>traffic>>>uplink", "outbound>>>trojan-out>>>traffic>>>downlink");
    assert!(
        wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(total)
            && api.get(down, false).ok() == Some(total)),
        "outbound counters {:?} / {:?}, expected {total}",
        api.get(up, false),
        api.get(down, false)
    );
}
