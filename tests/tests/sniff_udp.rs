//! Sniffing UDP sessions' first datagrams against the real binary with two shards, through a
//! SOCKS inbound's UDP ASSOCIATE: a QUIC ClientHello spread over two Initial datagrams (as
//! Chrome's post-quantum one is) is waited for and routes by its name, with both datagrams
//! delivered in order (unless `ipsExcluded` lists their address); half of one is routed by
//! its address once the wait is over; uTP and DHT packets are `bittorrent`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;
use shardray_tests::proxy::socks_config;
use shardray_tests::quic::client_initials;
use shardray_tests::udp::{DatagramPath, Socks5Udp};
use shardray_tests::Shardray;

/// A UDP server that answers every datagram with its name and reports what it received.
struct NamedServer {
    addr: SocketAddr,
    got: mpsc::Receiver<Vec<u8>>,
}

impl NamedServer {
    fn start(name: &'static str) -> NamedServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, got) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = tx.send(buf[..n].to_vec());
                let _ = socket.send_to(name.as_bytes(), from);
            }
        });
        NamedServer { addr, got }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.got.try_iter().collect()
    }
}

struct Setup {
    server: Shardray,
    /// Where the datagrams are addressed: reached when nothing sniffed changes the route.
    dest: NamedServer,
    quic: NamedServer,
    torrent: NamedServer,
}

fn setup() -> Setup {
    let (dest, quic, torrent) = (NamedServer::start("dest"), NamedServer::start("quic"), NamedServer::start("bt"));
    let mut config = socks_config(json!({ "auth": "noauth", "udp": true }), json!({}));
    config["inbounds"][0]["sniffing"] = json!({ "enabled": true, "destOverride": ["quic"] });
    // The same, but destinations in 127.0.0.0/8 keep their address whatever is sniffed.
    let mut excluded = config["inbounds"][0].clone();
    excluded["tag"] = json!("excluded");
    excluded["sniffing"]["ipsExcluded"] = json!(["127.0.0.0/8"]);
    config["inbounds"].as_array_mut().unwrap().push(excluded);
    config["outbounds"] = json!([
        { "tag": "direct", "protocol": "freedom" },
        { "tag": "to-quic", "protocol": "freedom", "settings": { "redirect": quic.addr.to_string() } },
        { "tag": "to-bt", "protocol": "freedom", "settings": { "redirect": torrent.addr.to_string() } }
    ]);
    config["routing"]["rules"] = json!([
        { "type": "field", "domain": ["full:www.example.com"], "outboundTag": "to-quic" },
        { "type": "field", "protocol": ["bittorrent"], "outboundTag": "to-bt" },
        { "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" }
    ]);
    let server = Shardray::start(&config, 2);
    Setup { server, dest, quic, torrent }
}

/// Sends `datagrams` on a new association to `setup.dest`; the names of the servers that answered,
/// one per datagram.
fn answers(setup: &Setup, datagrams: &[Vec<u8>]) -> Vec<String> {
    answers_via(setup, "socks-in", datagrams)
}

fn answers_via(setup: &Setup, inbound: &str, datagrams: &[Vec<u8>]) -> Vec<String> {
    let assoc = Socks5Udp::associate(setup.server.inbound(inbound)).unwrap();
    for d in datagrams {
        assoc.send(setup.dest.addr, d).unwrap();
    }
    (0..datagrams.len())
        .map(|_| match assoc.recv() {
            Ok((_, reply)) => String::from_utf8(reply).unwrap(),
            Err(e) => panic!("no answer: {e}\n{}", setup.server.output()),
        })
        .collect()
}

#[test]
fn a_client_hello_over_two_datagrams_routes_by_its_name() {
    let s = setup();
    let initials = client_initials("www.example.com", 1500, 2);
    assert_eq!(initials.len(), 2);
    for _ in 0..3 {
        assert_eq!(answers(&s, &initials), ["quic", "quic"]);
        // Both reached the named outbound's server, whole and in order; none went by address.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = Vec::new();
        while got.len() < 2 && Instant::now() < deadline {
            got.extend(s.quic.received());
        }
        assert_eq!(got, initials);
        assert!(s.dest.received().is_empty());
    }
    // A ClientHello that fits one datagram needs no wait.
    assert_eq!(answers(&s, &client_initials("www.example.com", 0, 1)), ["quic"]);
    // `ipsExcluded` lists the address: the name does not replace it, and both datagrams go
    // where they say.
    assert_eq!(answers_via(&s, "excluded", &initials), ["dest", "dest"]);
}

#[test]
fn half_a_client_hello_is_routed_by_address_after_the_wait() {
    let s = setup();
    let initials = client_initials("www.example.com", 1500, 2);
    let started = Instant::now();
    assert_eq!(answers(&s, &initials[..1]), ["dest"]);
    let took = started.elapsed();
    // Held for the sniffing window (200 ms), not for the session's idle time.
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(s.dest.received(), initials[..1]);
    assert!(s.quic.received().is_empty());
}

#[test]
fn utp_and_dht_are_bittorrent() {
    let s = setup();
    let mut syn = vec![0x41, 0x00, 0x30, 0x39];
    syn.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    syn.extend_from_slice(&[0; 4]);
    syn.extend_from_slice(&0x0010_0000u32.to_be_bytes());
    syn.extend_from_slice(&[0, 1, 0, 0]);
    let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe".to_vec();
    assert_eq!(answers(&s, &[syn]), ["bt"]);
    assert_eq!(answers(&s, &[ping]), ["bt"]);
    assert_eq!(answers(&s, &[b"neither of them".to_vec()]), ["dest"]);
    assert_eq!(s.torrent.received().len(), 2);
}
