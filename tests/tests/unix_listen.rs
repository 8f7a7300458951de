//! Inbounds listening on a Unix socket (`listen` a path, `/path,0666`, `@name` or `@@name`),
//! with the real binary on 2 shards: sing-box as the VLESS and Trojan client over WebSocket and
//! raw TCP through a small TCP→Unix forwarder (sing-box cannot dial a Unix socket), curl on
//! the socket itself of an HTTP inbound (`--unix-socket` sends the origin's own request, which
//! `allowTransparent` serves), the PROXY protocol in front
//! (as nginx or HAProxy send it), the socket file's mode, a second server refusing to take
//! a socket a live one serves on while replacing a stale file, the handshake bound (a socket's
//! clients are not one source) and a reload that changes a socket's inbound in place.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::singbox::{trojan_outbound, vless_outbound, SingBox};
use shardray_tests::vless::payload;
use shardray_tests::{run_cli, trojan_config, vless_config, wait_until, Shardray, ALICE, ALICE_PASSWORD};
use shardray_wire::proxy_protocol;

/// Where a forwarder connects: a socket file or an abstract name (its bytes after the NUL).
#[derive(Clone)]
enum Target {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Target {
    fn connect(&self) -> io::Result<UnixStream> {
        match self {
            Target::Path(p) => UnixStream::connect(p),
            Target::Abstract(name) => {
                UnixStream::connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name)?)
            }
        }
    }
}

/// A TCP→Unix forwarder on a loopback port, as a reverse proxy in front of the socket is:
/// each connection is copied both ways to a new connection to `target`, which first gets the
/// PROXY v2 header naming `client` if one is given.
struct Forwarder {
    addr: SocketAddr,
}

impl Forwarder {
    fn start(target: Target, client: Option<SocketAddr>) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for tcp in listener.incoming().map_while(Result::ok) {
                let target = target.clone();
                std::thread::spawn(move || {
                    let Ok(mut unix) = target.connect() else { return };
                    if let Some(client) = client {
                        let mut header = Vec::new();
                        proxy_protocol::encode(2, client, "127.0.0.1:443".parse().unwrap(), &mut header);
                        if unix.write_all(&header).is_err() {
                            return;
                        }
                    }
                    let (mut tcp_r, mut unix_w) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = io::copy(&mut tcp_r, &mut unix_w);
                        let _ = unix_w.shutdown(Shutdown::Write);
                    });
                    let mut tcp_w = tcp;
                    let _ = io::copy(&mut unix, &mut tcp_w);
                    let _ = tcp_w.shutdown(Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        Forwarder { addr }
    }
}

/// Sends `data` through sing-box to `dest` (writing on a second thread) and reads it back.
fn exchange(sb: &SingBox, dest: SocketAddr, data: &[u8]) -> io::Result<Vec<u8>> {
    let stream = sb.connect(dest)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut write_half = stream.try_clone()?;
    let data = data.to_vec();
    let len = data.len();
    let writer = std::thread::spawn(move || write_half.write_all(&data));
    let mut got = vec![0u8; len];
    let read = (&stream).read_exact(&mut got);
    writer.join().expect("writer thread")?;
    read?;
    Ok(got)
}

/// Echoes of a few sizes up to 1 MiB, one at a time and then 6 at once (both shards accept).
fn echoes(server: &Shardray, sb: &SingBox) {
    let echo = EchoServer::start();
    for (i, len) in [1usize, 4_096, 65_536, 1 << 20].into_iter().enumerate() {
        let data = payload(len, i as u64);
        let got = exchange(sb, echo.addr(), &data).unwrap_or_else(|e| panic!("{len} bytes: {e}\n{}", server.output()));
        assert!(got == data, "{len} bytes: {} came back\n{}\n{}", got.len(), sb.log(), server.output());
    }
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let echo = echo.addr();
            s.spawn(move || {
                let data = payload(100_000, 100 + t);
                assert!(exchange(sb, echo, &data).unwrap() == data, "parallel connection {t}");
            });
        }
    });
}

fn ws(path: &str, proxy_protocol: bool) -> Value {
    json!({ "network": "ws", "wsSettings": { "path": path, "acceptProxyProtocol": proxy_protocol } })
}

fn with_access_log(mut config: Value, dir: &Path) -> Value {
    config["log"] = json!({ "loglevel": "info", "access": dir.join("access.log") });
    config
}

/// A name no other test (or run) uses for an abstract socket.
fn abstract_name(what: &str) -> String {
    format!("shardray-test-{}-{what}", std::process::id())
}

#[test]
fn vless_over_ws_on_a_socket_file_with_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vless-ws.sock");
    let extra =
        json!({ "listen": format!("{},0666", socket.display()), "port": 443, "streamSettings": ws("/vl", false) });
    let config =
        with_access_log(vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), extra), dir.path());
    let server = Shardray::start(&config, 2);
    let meta = std::fs::symlink_metadata(&socket).expect("the socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o666, "the mode after the comma");
    assert!(server.output().contains(&format!("listening on {}", socket.display())), "{}", server.output());

    let forwarder = Forwarder::start(Target::Path(socket.clone()), None);
    let mut out = vless_outbound(forwarder.addr, ALICE, None);
    out["transport"] = json!({ "type": "ws", "path": "/vl" });
    let sb = SingBox::start(out);
    echoes(&server, &sb);

    // No PROXY header: the client is known as Xray knows it, 0.0.0.0.
    let access = dir.path().join("access.log");
    let read = || std::fs::read_to_string(&access).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(5), || read().contains("from 0.0.0.0:0 accepted")), "{}", read());
}

#[test]
fn trojan_over_ws_on_a_padded_abstract_socket_behind_the_proxy_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let name = abstract_name("trojan-ws");
    let extra = json!({ "listen": format!("@@{name}"), "streamSettings": ws("/tr", true) });
    let config = with_access_log(
        trojan_config(json!([{ "password": ALICE_PASSWORD, "email": "alice@example.com" }]), extra),
        dir.path(),
    );
    let server = Shardray::start(&config, 2);

    // `@@` pads the name with NULs to the whole sun_path, as HAProxy names abstract sockets:
    // the bare name is another address.
    let mut padded = name.as_bytes().to_vec();
    padded.resize(107, 0);
    assert!(Target::Abstract(name.as_bytes().to_vec()).connect().is_err(), "the unpadded name must not answer");

    let client: SocketAddr = "203.0.113.7:4444".parse().unwrap();
    let forwarder = Forwarder::start(Target::Abstract(padded.clone()), Some(client));
    let mut out = trojan_outbound(forwarder.addr, ALICE_PASSWORD, None);
    out["transport"] = json!({ "type": "ws", "path": "/tr" });
    let sb = SingBox::start(out);
    echoes(&server, &sb);
    let access = dir.path().join("access.log");
    let read = || std::fs::read_to_string(&access).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(5), || read().contains("from 203.0.113.7:4444 accepted")), "{}", read());
    assert!(!read().contains("from 0.0.0.0:0"), "the header's client must be the one seen:\n{}", read());

    // The header is required: without it a client gets nothing back.
    let bare = Forwarder::start(Target::Abstract(padded), None);
    let mut out = trojan_outbound(bare.addr, ALICE_PASSWORD, None);
    out["transport"] = json!({ "type": "ws", "path": "/tr" });
    let sb = SingBox::start(out);
    assert!(exchange(&sb, EchoServer::start().addr(), b"ping").is_err(), "served without a PROXY header");
}

#[test]
fn raw_vless_on_an_abstract_socket_relays_a_large_transfer() {
    // Raw TCP straight into VLESS: the relay may splice the client's socket, a Unix one here.
    let name = abstract_name("vless-raw");
    let config =
        vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({ "listen": format!("@{name}") }));
    let server = Shardray::start(&config, 2);
    let forwarder = Forwarder::start(Target::Abstract(name.into_bytes()), None);
    let sb = SingBox::start(vless_outbound(forwarder.addr, ALICE, None));
    echoes(&server, &sb);
    let echo = EchoServer::start();
    let data = payload(16 << 20, 7);
    assert!(exchange(&sb, echo.addr(), &data).unwrap() == data, "16 MiB through the socket");
}

#[test]
fn curl_through_an_http_proxy_inbound_on_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("http.sock");
    let mut config = vless_config(json!([]), json!({}));
    config["inbounds"][0] = json!({
        "tag": "http-in", "listen": socket, "port": 0, "protocol": "http",
        "settings": { "allowTransparent": true }
    });
    let server = Shardray::start(&config, 2);
    let upstream = RecordingServer::start(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    let url = format!("http://{}/through-the-socket", upstream.addr());
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--unix-socket", socket.to_str().unwrap(), &url])
        .output()
        .expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert_eq!(body, "hello", "curl: {}\n{}", String::from_utf8_lossy(&out.stderr), server.output());
    let seen = upstream.next(Duration::from_secs(5)).expect("the upstream saw the request");
    assert!(String::from_utf8_lossy(&seen).starts_with("GET /through-the-socket "), "{seen:?}");
}

#[test]
fn a_live_socket_is_never_taken_and_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vless.sock");
    let config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({ "listen": socket }));
    let first = Shardray::start(&config, 2);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;

    let out = Shardray::try_start(&config, 2).err().expect("a second server must not start on a live socket");
    assert!(out.contains("another process is serving on it"), "{out}");
    assert!(UnixStream::connect(&socket).is_ok(), "the first server lost its socket");
    let (status, out) = run_cli(&["test", "-c", first.dir.path().join("config.json").to_str().unwrap()]);
    assert!(status.success(), "`shardray test` binds nothing: {out}");

    // Killed, the first leaves its socket file behind: the next start replaces it.
    first.kill9();
    assert!(std::fs::symlink_metadata(&socket).is_ok(), "the killed server's socket file is gone");
    let second = Shardray::start(&config, 2);
    let forwarder = Forwarder::start(Target::Path(socket.clone()), None);
    let sb = SingBox::start(vless_outbound(forwarder.addr, ALICE, None));
    let echo = EchoServer::start();
    assert_eq!(exchange(&sb, echo.addr(), b"ping").unwrap(), b"ping", "{}", second.output());
    // Without a mode after the comma the file keeps what the umask gave it, as in Xray.
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, mode);

    // A file that is not a socket is not ours to remove.
    drop(second);
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"data").unwrap();
    let config = vless_config(json!([{ "id": ALICE }]), json!({ "listen": plain }));
    let out = Shardray::try_start(&config, 2).err().expect("a regular file must not be replaced");
    assert!(out.contains("it exists and is not a socket"), "{out}");
    assert_eq!(std::fs::read(&plain).unwrap(), b"data");
}

/// A raw VLESS connection to the socket that has sent `first` (a whole or partial header).
fn unix_vless(target: &Target, first: &[u8]) -> io::Result<UnixStream> {
    let mut s = target.connect()?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(first)?;
    Ok(s)
}

/// Finishes a VLESS request (`rest` of its header), sends `data` and reads back its echo.
fn finish_and_echo(s: &mut UnixStream, rest: &[u8], data: &[u8]) -> io::Result<Vec<u8>> {
    s.write_all(rest)?;
    s.write_all(data)?;
    let mut back = vec![0u8; 2 + data.len()];
    s.read_exact(&mut back)?;
    Ok(back.split_off(2))
}

#[test]
fn a_sockets_clients_are_not_one_source_for_the_handshake_bound() {
    // Every client of a Unix socket has one address, 0.0.0.0: counted as one source, two
    // tricklers a shard would shut out every other client of the socket.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vless.sock");
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({ "listen": socket }));
    config["policy"]["system"]["maxHandshakesPerSource"] = json!(2);
    config["policy"]["levels"]["0"]["handshake"] = json!(15);
    let server = Shardray::start(&config, 2);
    let echo = EchoServer::start();
    let opening = shardray_tests::vless::request(ALICE, echo.addr());
    let socket = Target::Path(socket);
    // Six handshakes in flight, more than the bound times the shard count.
    let mut tricklers: Vec<UnixStream> = (0..6).map(|_| unix_vless(&socket, &opening[..1]).unwrap()).collect();
    for i in 0..4u8 {
        let mut s = unix_vless(&socket, &opening).unwrap();
        let got = finish_and_echo(&mut s, &[], &[b'0' + i; 8]);
        assert_eq!(got.ok(), Some(vec![b'0' + i; 8]), "a client was refused while others trickle\n{}", server.output());
    }
    for (i, s) in tricklers.iter_mut().enumerate() {
        let got = finish_and_echo(s, &opening[1..], b"done");
        assert_eq!(got.ok().as_deref(), Some(&b"done"[..]), "trickler {i} was closed\n{}", server.output());
    }
    assert!(!server.output().contains("maxHandshakesPerSource"), "{}", server.output());
}

#[test]
fn a_reload_changes_a_socket_inbound_in_place_keeping_its_socket() {
    // The socket file's mode changes, and the abstract socket's inbound starts to want a PROXY
    // header (a balancer was put in front): both are changed in place, on the same sockets.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vless.sock");
    let name = abstract_name("reload");
    let mut config = vless_config(
        json!([{ "id": ALICE, "email": "alice@example.com" }]),
        json!({ "listen": format!("{},0600", socket.display()) }),
    );
    let mut second = config["inbounds"][0].clone();
    second["tag"] = json!("vless-abstract");
    second["listen"] = json!(format!("@{name}"));
    config["inbounds"].as_array_mut().unwrap().push(second);
    let server = Shardray::start(&config, 2);
    let echo = EchoServer::start();
    let opening = shardray_tests::vless::request(ALICE, echo.addr());
    let (file, abstract_socket) = (Target::Path(socket.clone()), Target::Abstract(name.into_bytes()));
    let mut live: Vec<UnixStream> = [&file, &abstract_socket]
        .into_iter()
        .map(|t| {
            let mut s = unix_vless(t, &opening).unwrap();
            assert_eq!(finish_and_echo(&mut s, &[], b"before").unwrap(), b"before");
            s
        })
        .collect();
    let mode = || std::fs::metadata(&socket).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(), 0o600);

    config["inbounds"][0]["listen"] = json!(format!("{},0666", socket.display()));
    config["inbounds"][1]["streamSettings"] = json!({ "sockopt": { "acceptProxyProtocol": true } });
    std::fs::write(server.dir.path().join("config.json"), config.to_string()).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    let changed = |tag: &str| format!("inbound \"{tag}\" changed (same listener)");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let out = server.output();
            out.contains(&changed("vless-in")) && out.contains(&changed("vless-abstract"))
        }),
        "{}",
        server.output()
    );
    assert_eq!(mode(), 0o666, "the new mode");
    let mut s = unix_vless(&file, &opening).unwrap();
    assert_eq!(finish_and_echo(&mut s, &[], b"file").unwrap(), b"file");
    let mut header = Vec::new();
    proxy_protocol::encode(2, "203.0.113.7:4444".parse().unwrap(), "127.0.0.1:443".parse().unwrap(), &mut header);
    let mut s = unix_vless(&abstract_socket, &header).unwrap();
    assert_eq!(finish_and_echo(&mut s, &opening, b"proxied").unwrap(), b"proxied", "{}", server.output());
    for s in &mut live {
        s.write_all(b"after").unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).expect("a live session ended");
        assert_eq!(&back, b"after");
    }
}

#[test]
fn config_errors_name_the_listen_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (json!({ "listen": "/tmp/x.sock,0999" }), "inbounds[0].listen: \"0999\" after the comma is not a file mode"),
        (
            json!({ "listen": "@udp", "protocol": "dokodemo-door", "settings": { "address": "127.0.0.1", "port": 1, "network": "tcp,udp" } }),
            "inbounds[0].listen: a Unix socket carries streams only",
        ),
    ];
    for (extra, wanted) in cases {
        let config = vless_config(json!([{ "id": ALICE }]), extra);
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let (status, out) = run_cli(&["test", "-c", path.to_str().unwrap()]);
        assert!(!status.success() && out.contains(wanted), "wanted {wanted:?}:\n{out}");
    }
}

#[test]
fn hiddify_dispatch_a_proxied_socket_falls_back_to_a_padded_abstract_ws_inbound() {
    // Hiddify's layout: HAProxy sends every connection, with a PROXY header, to a Trojan
    // "dispatcher" on an abstract socket; what is not Trojan falls back by its HTTP path, with
    // a PROXY v2 header of its own, to a WebSocket inbound on a padded abstract socket.
    let dir = tempfile::tempdir().unwrap();
    let (dispatcher, ws_name) = (abstract_name("dispatcher"), abstract_name("vless-ws"));
    let mut config = trojan_config(
        json!([{ "password": ALICE_PASSWORD, "email": "alice@example.com" }]),
        json!({
            "listen": format!("@{dispatcher}"),
            "settings": { "fallbacks": [{ "path": "/vl", "dest": format!("@@{ws_name}"), "xver": 2 }] },
            "streamSettings": { "tcpSettings": { "acceptProxyProtocol": true } },
        }),
    );
    let vless = vless_config(
        json!([{ "id": ALICE, "email": "bob@example.com" }]),
        json!({ "tag": "vless-ws", "listen": format!("@@{ws_name}"), "streamSettings": ws("/vl", true) }),
    );
    config["inbounds"].as_array_mut().unwrap().push(vless["inbounds"][0].clone());
    let server = Shardray::start(&with_access_log(config, dir.path()), 2);

    let client: SocketAddr = "203.0.113.9:5555".parse().unwrap();
    let forwarder = Forwarder::start(Target::Abstract(dispatcher.into_bytes()), Some(client));
    let mut out = vless_outbound(forwarder.addr, ALICE, None);
    out["transport"] = json!({ "type": "ws", "path": "/vl" });
    let sb = SingBox::start(out);
    echoes(&server, &sb);
    let access = dir.path().join("access.log");
    let read = || std::fs::read_to_string(&access).unwrap_or_default();
    let wanted = "from 203.0.113.9:5555 accepted";
    assert!(
        wait_until(Duration::from_secs(5), || read().contains(wanted) && read().contains("[vless-ws >> direct]")),
        "{}",
        read()
    );
}
