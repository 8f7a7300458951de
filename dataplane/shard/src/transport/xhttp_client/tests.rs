//! The client against small servers written here: the requests it sends (methods, paths with
//! session and sequence, headers, padding, framing) as Xray's server reads them, and its
//! sessions carrying bytes both ways, over HTTP/1.1 and HTTP/2 (h2c here; TLS in the
//! end-to-end tests).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::LocalExecutor;

use super::*;

fn settings(mode: Mode) -> XhttpSpec {
    let settings = Settings {
        path: "/p/".into(),
        query: "q=1".into(),
        mode,
        headers: vec![("X-Extra".into(), "yes".into())],
        max_each_post_bytes: Range::new(1000, 1000),
        min_posts_interval_ms: Range::new(0, 0),
        ..Settings::default()
    };
    XhttpSpec {
        settings,
        xmux: XmuxSpec { max_connections: Range::new(1, 1), ..Default::default() },
        download_settings: false,
        download: None,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ (i >> 9) as u8)).collect()
}

/// A request head as a server reads it.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one request head from `sock`; bytes after it stay in `buf`.
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Head {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8(buf[..end].to_vec()).unwrap();
            buf.drain(..end + 4);
            let mut lines = text.split("\r\n");
            let mut first = lines.next().unwrap().split(' ');
            let (method, target) = (first.next().unwrap().to_owned(), first.next().unwrap().to_owned());
            assert_eq!(first.next(), Some("HTTP/1.1"));
            let headers = lines
                .map(|l| {
                    let (k, v) = l.split_once(": ").unwrap();
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            return Head { method, target, headers };
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed inside a head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn read_exact(sock: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    while buf.len() < n {
        let mut chunk = [0u8; 4096];
        let got = sock.read(&mut chunk).await.unwrap();
        assert!(got > 0, "closed inside a body");
        buf.extend_from_slice(&chunk[..got]);
    }
    buf.drain(..n).collect()
}

/// Xray's checks of a request's padding and our fixed headers; the session id from the path.
fn check_common(head: &Head, scheme_host: &str) {
    let referer = head.get("Referer").expect("padding in Referer");
    let padding = referer.strip_prefix(&format!("{scheme_host}/p/?x_padding=")).expect(referer);
    assert!((100..=1000).contains(&padding.len()), "padding length {}", padding.len());
    assert!(padding.bytes().all(|b| b == b'X'));
    assert!(head.get("User-Agent").unwrap().contains(" Chrome/"));
    assert_eq!(head.get("Sec-Fetch-Mode"), Some("cors"));
    assert_eq!(head.get("X-Extra"), Some("yes"));
}

fn session_of(target: &str) -> (String, Option<u64>) {
    let rest = target.strip_prefix("/p/").unwrap().strip_suffix("?q=1").unwrap();
    let mut parts = rest.split('/');
    let sid = parts.next().unwrap().to_owned();
    uuid::Uuid::parse_str(&sid).unwrap();
    (sid, parts.next().map(|s| s.parse().unwrap()))
}

/// packet-up over HTTP/1.1: the GET carries the session, POSTs go on one kept-alive
/// connection numbered from 0, none over `scMaxEachPostBytes`, together the bytes written.
#[test]
fn packet_up_over_http1() {
    LocalExecutor::default().run(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = Destination::from(listener.local_addr().unwrap());
        let client = XhttpClient::build(&settings(Mode::PacketUp), None, &dest, false).unwrap();
        let bulk = pattern(2500, 3);
        let server = glommio::spawn_local(async move {
            let mut get = listener.accept().await.unwrap();
            let mut get_buf = Vec::new();
            let head = read_head(&mut get, &mut get_buf).await;
            assert_eq!(head.method, "GET");
            assert_eq!(head.get("Host"), Some("127.0.0.1"));
            assert_eq!(head.get("Content-Type"), None);
            check_common(&head, "http://127.0.0.1");
            let (sid, seq) = session_of(&head.target);
            assert_eq!(seq, None);
            get.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
            let mut post = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let (mut bodies, mut next) = (Vec::new(), 0u64);
            while bodies.iter().map(Vec::len).sum::<usize>() < 5 + 5 + 2500 {
                let head = read_head(&mut post, &mut buf).await;
                assert_eq!(head.method, "POST");
                check_common(&head, "http://127.0.0.1");
                assert_eq!(session_of(&head.target), (sid.clone(), Some(next)));
                next += 1;
                let len: usize = head.get("Content-Length").unwrap().parse().unwrap();
                assert!((1..=1000).contains(&len), "POST of {len} bytes");
                bodies.push(read_exact(&mut post, &mut buf, len).await);
                post.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
                if next == 1 {
                    // The client sends more once it has this.
                    get.write_all(b"5\r\nworld\r\n").await.unwrap();
                }
            }
            get.write_all(b"0\r\n\r\n").await.unwrap();
            bodies
        });
        let mut s = client.open(&dest, &Via::default()).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"world");
        s.write_all(b"again").await.unwrap();
        s.write_all(&bulk).await.unwrap();
        s.close().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let bodies = server.await;
        assert_eq!(bodies[0], b"hello");
        let mut want = b"helloagain".to_vec();
        want.extend_from_slice(&bulk);
        assert_eq!(bodies.concat(), want);
    });
}

/// packet-up over HTTP/1.1 with `uplinkHTTPMethod: GET`: each uplink GET with a body says
/// its length, so the next request on the kept-alive connection reads as one.
#[test]
fn uplink_gets_over_http1_carry_their_length() {
    LocalExecutor::default().run(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = Destination::from(listener.local_addr().unwrap());
        let mut spec = settings(Mode::PacketUp);
        spec.settings.uplink_http_method = "GET".into();
        let client = XhttpClient::build(&spec, None, &dest, false).unwrap();
        let server = glommio::spawn_local(async move {
            let mut get = listener.accept().await.unwrap();
            let mut get_buf = Vec::new();
            let (sid, _) = session_of(&read_head(&mut get, &mut get_buf).await.target);
            get.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
            let mut up = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut bodies = Vec::new();
            for seq in 0..2 {
                let head = read_head(&mut up, &mut buf).await;
                assert_eq!(head.method, "GET");
                assert_eq!(session_of(&head.target), (sid.clone(), Some(seq)));
                let len: usize = head.get("Content-Length").expect("an uplink GET's length").parse().unwrap();
                bodies.push(read_exact(&mut up, &mut buf, len).await);
                up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
                if seq == 0 {
                    get.write_all(b"5\r\nworld\r\n").await.unwrap();
                }
            }
            get.write_all(b"0\r\n\r\n").await.unwrap();
            bodies
        });
        let mut s = client.open(&dest, &Via::default()).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"world");
        s.write_all(b"again").await.unwrap();
        s.close().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(server.await, vec![b"hello".to_vec(), b"again".to_vec()]);
    });
}

/// stream-one over HTTP/1.1: one chunked POST to the bare path, typed `application/grpc`,
/// its response's chunks the downlink.
#[test]
fn stream_one_over_http1() {
    LocalExecutor::default().run(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = Destination::from(listener.local_addr().unwrap());
        let client = XhttpClient::build(&settings(Mode::StreamOne), None, &dest, false).unwrap();
        let up = pattern(300_000, 1);
        let server = glommio::spawn_local(async move {
            let mut sock = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let head = read_head(&mut sock, &mut buf).await;
            assert_eq!((head.method.as_str(), head.target.as_str()), ("POST", "/p/?q=1"));
            assert_eq!(head.get("Transfer-Encoding"), Some("chunked"));
            assert_eq!(head.get("Content-Type"), Some("application/grpc"));
            check_common(&head, "http://127.0.0.1");
            sock.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
            // Echo each decoded piece back as a chunk, until the last chunk.
            let mut decoder = ChunkedDecoder::new();
            let mut total = 0;
            loop {
                let mut raw = std::mem::take(&mut buf);
                if raw.is_empty() {
                    raw = vec![0u8; 8192];
                    let n = sock.read(&mut raw).await.unwrap();
                    assert!(n > 0);
                    raw.truncate(n);
                }
                let d = decoder.decode(&mut raw).unwrap();
                if d.payload > 0 {
                    let mut out = Vec::new();
                    encode_chunk_header(d.payload, &mut out);
                    out.extend_from_slice(&raw[..d.payload]);
                    out.extend_from_slice(CHUNK_END);
                    sock.write_all(&out).await.unwrap();
                    total += d.payload;
                }
                if decoder.is_done() {
                    break;
                }
            }
            sock.write_all(LAST_CHUNK).await.unwrap();
            total
        });
        let s = client.open(&dest, &Via::default()).await.unwrap();
        let (mut r, mut w) = futures_lite::io::split(s);
        let sending = up.clone();
        let writer = glommio::spawn_local(async move {
            for piece in sending.chunks(70_000) {
                w.write_all(piece).await.unwrap();
            }
            w.close().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await;
        assert_eq!(server.await, up.len());
        assert!(got == up, "echo differs");
    });
}

/// A refusal (here a 404) fails the session's read with the status.
#[test]
fn a_refused_request_fails_the_session() {
    LocalExecutor::default().run(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = Destination::from(listener.local_addr().unwrap());
        let client = XhttpClient::build(&settings(Mode::StreamOne), None, &dest, false).unwrap();
        let server = glommio::spawn_local(async move {
            let mut sock = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            read_head(&mut sock, &mut buf).await;
            sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            sock
        });
        let mut s = client.open(&dest, &Via::default()).await.unwrap();
        let mut got = [0u8; 16];
        let e = s.read(&mut got).await.unwrap_err();
        assert!(e.to_string().contains("HTTP 404"), "{e}");
        drop(server.await);
    });
}

/// What the h2c server below saw.
#[derive(Default)]
struct Seen {
    connections: usize,
    /// (method, path, content-type, content-length) of every request.
    requests: Vec<(String, String, Option<String>, Option<String>)>,
}

/// A session's downlink on the h2c server below, and packet-up's POSTs waiting for their turn.
struct Downlink {
    send: SendStream<Bytes>,
    next_seq: u64,
    waiting: std::collections::BTreeMap<u64, Bytes>,
}

/// An XHTTP server over h2c for every mode, echoing each session's uplink on its downlink.
fn spawn_h2_server(listener: TcpListener, seen: Rc<RefCell<Seen>>) {
    glommio::spawn_local(async move {
        loop {
            let sock = listener.accept().await.unwrap();
            seen.borrow_mut().connections += 1;
            let seen = seen.clone();
            glommio::spawn_local(async move {
                let mut conn = h2::server::handshake(TokioIo(sock)).await.unwrap();
                let downs: Rc<RefCell<HashMap<String, Downlink>>> = Rc::default();
                let ok = || Response::builder().status(200).body(()).unwrap();
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let header = |name: &str| request.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
                    let path = request.uri().path_and_query().unwrap().as_str().to_owned();
                    seen.borrow_mut().requests.push((
                        request.method().to_string(),
                        path.clone(),
                        header("content-type"),
                        header("content-length"),
                    ));
                    let referer = header("referer").unwrap();
                    assert!(referer.starts_with("http://127.0.0.1/p/?x_padding=XXXX"), "{referer}");
                    assert_eq!(request.uri().authority().unwrap().as_str(), "127.0.0.1");
                    let rest = path.strip_prefix("/p/").unwrap().strip_suffix("?q=1").unwrap().to_owned();
                    let method = request.method().clone();
                    let mut body = request.into_body();
                    let downs = downs.clone();
                    if method == Method::GET {
                        let send = respond.send_response(ok(), false).unwrap();
                        downs.borrow_mut().insert(rest, Downlink { send, next_seq: 0, waiting: Default::default() });
                        continue;
                    }
                    glommio::spawn_local(async move {
                        let (sid, seq) = match rest.split_once('/') {
                            Some((s, n)) => (s.to_owned(), Some(n.parse::<u64>().unwrap())),
                            None => (rest.clone(), None),
                        };
                        let mut own = match seq {
                            None => Some(respond.send_response(ok(), false).unwrap()),
                            Some(_) => None,
                        };
                        let mut packet = Vec::new();
                        while let Some(data) = body.data().await {
                            let Ok(data) = data else { break };
                            let _ = body.flow_control().release_capacity(data.len());
                            match (&mut own, sid.is_empty(), seq) {
                                (Some(s), true, _) => {
                                    let _ = s.send_data(data, false);
                                }
                                (_, false, None) => {
                                    let _ = downs.borrow_mut().get_mut(&sid).unwrap().send.send_data(data, false);
                                }
                                _ => packet.extend_from_slice(&data),
                            }
                        }
                        match (own, seq) {
                            // stream-one: the response ends with the request.
                            (Some(mut s), None) if sid.is_empty() => {
                                let _ = s.send_data(Bytes::new(), true);
                            }
                            // stream-up: its end ends the downlink.
                            (Some(_), None) => {
                                let _ = downs.borrow_mut().remove(&sid).unwrap().send.send_data(Bytes::new(), true);
                            }
                            (_, Some(n)) => {
                                let mut downs = downs.borrow_mut();
                                let down = downs.get_mut(&sid).unwrap();
                                down.waiting.insert(n, Bytes::from(packet));
                                while let Some(data) = down.waiting.remove(&down.next_seq) {
                                    let _ = down.send.send_data(data, false);
                                    down.next_seq += 1;
                                }
                                let _ = respond.send_response(ok(), true);
                            }
                            (None, None) => unreachable!(),
                        }
                    })
                    .detach();
                }
            })
            .detach();
        }
    })
    .detach();
}

/// One echo of `data` through a new session of `client`.
async fn echo_h2(client: &XhttpClient, dest: &Destination, data: &[u8]) -> Vec<u8> {
    let s = client.open(dest, &Via::default()).await.unwrap();
    let (mut r, mut w) = futures_lite::io::split(s);
    let sending = data.to_vec();
    let writer = glommio::spawn_local(async move {
        for piece in sending.chunks(40_000) {
            w.write_all(piece).await.unwrap();
        }
        // What the stream's window has not taken yet goes out with a flush.
        w.flush().await.unwrap();
        w
    });
    let mut got = vec![0u8; data.len()];
    r.read_exact(&mut got).await.unwrap();
    let mut w = writer.await;
    w.close().await.unwrap();
    got
}

/// Every mode over HTTP/2: bytes both ways, the requests' shapes, and XMUX putting
/// concurrent sessions on one connection (`maxConnections: 1`).
#[test]
fn every_mode_over_http2_shares_one_connection() {
    LocalExecutor::default().run(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = Destination::from(listener.local_addr().unwrap());
        let seen = Rc::new(RefCell::new(Seen::default()));
        spawn_h2_server(listener, seen.clone());
        for mode in [Mode::StreamOne, Mode::StreamUp, Mode::PacketUp] {
            eprintln!("mode {mode:?}");
            seen.borrow_mut().requests.clear();
            let client = Rc::new(XhttpClient::build(&settings(mode), None, &dest, true).unwrap());
            let data = pattern(200_000, 5);
            let sessions = (0..3).map(|_| {
                let (client, dest, data) = (client.clone(), dest.clone(), data.clone());
                glommio::spawn_local(async move { echo_h2(&client, &dest, &data).await == data })
            });
            let sessions: Vec<_> = sessions.collect();
            for s in sessions {
                assert!(s.await, "{mode:?}: echo differs");
            }
            let seen = seen.borrow();
            let kinds: Vec<(&str, Option<&str>)> =
                seen.requests.iter().map(|(m, _, ct, _)| (m.as_str(), ct.as_deref())).collect();
            match mode {
                Mode::StreamOne => {
                    assert_eq!(kinds, vec![("POST", Some("application/grpc")); 3]);
                    assert!(seen.requests.iter().all(|r| r.1 == "/p/?q=1"));
                }
                Mode::StreamUp => {
                    assert_eq!(kinds.iter().filter(|k| **k == ("GET", None)).count(), 3);
                    assert_eq!(kinds.iter().filter(|k| **k == ("POST", Some("application/grpc"))).count(), 3);
                }
                Mode::PacketUp | Mode::Auto => {
                    assert_eq!(kinds.iter().filter(|k| k.0 == "GET").count(), 3);
                    let posts: Vec<_> = seen.requests.iter().filter(|r| r.0 == "POST").collect();
                    // 200,000 bytes in POSTs of at most 1000, each with its length.
                    assert!(posts.len() >= 3 * 200, "{} POSTs", posts.len());
                    let total: usize = posts.iter().map(|r| r.3.as_ref().unwrap().parse::<usize>().unwrap()).sum();
                    assert_eq!(total, 3 * 200_000);
                    assert!(posts.iter().all(|r| r.2.is_none()));
                }
            }
        }
        assert_eq!(seen.borrow().connections, 3, "one connection per client");
    });
}

/// Polls `done` every 10 ms for at most `within`.
async fn poll_until(within: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > within {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// An HTTP/2 connection stays open while a request is in flight on it, though no session
/// runs there (as packet-up POSTs may go on a connection of their own), and closes once it
/// has carried none for the idle bound (here 200 ms, Xray's 300 s otherwise).
#[test]
fn a_connection_with_a_request_in_flight_is_not_idle() {
    LocalExecutor::default().run(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = Destination::from(listener.local_addr().unwrap());
        spawn_h2_server(listener, Rc::default());
        let mut client = XhttpClient::build(&settings(Mode::StreamOne), None, &dest, true).unwrap();
        let idle = Duration::from_millis(200);
        Rc::get_mut(&mut client.0).unwrap().conn_idle = idle;
        let client = client.0;
        let conn = client.mux(&dest, &Via::default()).await.unwrap();
        let request = client.h2_request(client.request(None, None, Body::Stream)).unwrap();
        let (response, mut send, in_flight) = client.h2_send(&conn, request, false).await.unwrap();
        assert!(!poll_until(idle * 4, || conn.state.dead.get()).await, "closed while in use");
        send.send_data(Bytes::new(), true).unwrap();
        let mut body = H2Body::new(response);
        let mut scratch = [0u8; 64];
        assert_eq!(futures_lite::future::poll_fn(|cx| body.poll_read(cx, &mut scratch)).await.unwrap(), 0);
        drop(in_flight);
        let over = Instant::now();
        assert!(poll_until(Duration::from_secs(5), || conn.state.dead.get()).await, "idle, still open");
        assert!(over.elapsed() >= idle, "closed {:?} after its last request", over.elapsed());
    });
}
