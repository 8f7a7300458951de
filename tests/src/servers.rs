//! Loopback servers the proxy relays to: an echo server and a recording sink.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Accepts on 127.0.0.1 until dropped, handing each connection to `handle` on its own thread.
struct Acceptor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Acceptor {
    fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Acceptor {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = Arc::new(handle);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let handle = handle.clone();
                std::thread::spawn(move || handle(conn));
            }
        });
        Acceptor { addr, stop }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Echoes every byte back; after the client's end of stream, closes its own write side.
pub struct EchoServer {
    acceptor: Acceptor,
}

impl EchoServer {
    /// Starts on an ephemeral loopback port.
    pub fn start() -> EchoServer {
        EchoServer {
            acceptor: Acceptor::start(|mut conn| {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
            }),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr
    }
}

/// Records everything each connection sends (until its end of stream) and reports it on a
/// channel; optionally answers with a fixed reply first.
pub struct RecordingServer {
    acceptor: Acceptor,
    received: mpsc::Receiver<Vec<u8>>,
}

impl RecordingServer {
    /// Starts on an ephemeral loopback port; each connection gets `reply` (may be empty).
    pub fn start(reply: &'static [u8]) -> RecordingServer {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let acceptor = Acceptor::start(move |mut conn| {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut replied = false;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if !replied && !reply.is_empty() {
                            let _ = conn.write_all(reply);
                            replied = true;
                        }
                    }
                }
            }
            let _ = conn.shutdown(Shutdown::Write);
            let _ = tx.lock().unwrap().send(got);
        });
        RecordingServer { acceptor, received: rx }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr
    }

    /// The bytes of the next connection that ended, waiting up to `within`.
    pub fn next(&self, within: Duration) -> Option<Vec<u8>> {
        self.received.recv_timeout(within).ok()
    }
}
