//! The far end of every benchmark stream: a loopback TCP server that swallows uploads and
//! produces downloads, checking and generating the payload pattern.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::pattern::{self, Ack, Flow, Request, Verifier, REQUEST_LEN};

/// A running sink; its threads live until the process exits.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
}

impl Sink {
    /// Binds 127.0.0.1 on a free port and starts accepting; each connection gets a thread
    /// whose socket operations give up after `timeout`.
    pub fn spawn(timeout: Duration) -> Result<Sink> {
        Sink::spawn_niced(timeout, 0)
    }

    /// Like [`Sink::spawn`], with every sink thread at nice `nice` (0: unchanged).
    pub fn spawn_niced(timeout: Duration, nice: i32) -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the sink")?;
        let addr = listener.local_addr()?;
        thread::Builder::new().name("sink-accept".into()).spawn(move || {
            // Connection threads are started from this one and inherit its priority.
            if nice != 0 {
                if let Err(e) = crate::sys::nice_this_thread(nice) {
                    eprintln!("warning: the sink stays at its priority: {e}");
                }
            }
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = thread::Builder::new().name("sink-conn".into()).spawn(move || serve(conn, timeout));
            }
        })?;
        Ok(Sink { addr })
    }

    /// Where the sink listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Serves one stream; errors only end the stream (the client sees them as a short transfer).
fn serve(mut conn: TcpStream, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    let mut head = [0u8; REQUEST_LEN];
    // Probes that only check the port close without a request; that is not an error.
    if conn.read_exact(&mut head).is_err() {
        return;
    }
    let Some(req) = Request::decode(&head) else {
        let _ = conn.shutdown(Shutdown::Both);
        return;
    };
    match req.flow {
        Flow::Up => {
            let mut verifier = Verifier::new(req.start);
            let mut buf = vec![0u8; pattern::CHUNK];
            let _ = pattern::recv_pattern(&mut conn, &mut verifier, req.len, &mut buf, deadline);
            let ack = Ack { intact: verifier.intact(), received: verifier.received() };
            let _ = conn.write_all(&ack.encode());
        }
        Flow::Down => {
            let _ = pattern::send_pattern(&mut conn, &[], req.start, req.len, deadline);
        }
    }
    // Wait for the client to close first, so that no reset can cut off the tail in flight.
    let mut scratch = [0u8; 512];
    while matches!(conn.read(&mut scratch), Ok(n) if n > 0) {}
}

/// A loopback echo server for short request/response connections: each connection sends
/// exactly `len` bytes, gets them back, and is closed by the server. A fixed pool of threads
/// accepts, so that thread creation does not sit on the measured path; the threads live until
/// the process exits.
#[derive(Debug)]
pub struct Echo {
    addr: SocketAddr,
}

impl Echo {
    /// Binds 127.0.0.1 on a free port with `threads` accepting threads; every socket operation
    /// gives up after `timeout`.
    pub fn spawn(len: usize, threads: usize, timeout: Duration) -> Result<Echo> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the echo server")?;
        let addr = listener.local_addr()?;
        for i in 0..threads.max(1) {
            let listener = listener.try_clone().context("sharing the echo listener")?;
            thread::Builder::new().name(format!("echo-{i}")).spawn(move || {
                let mut buf = vec![0u8; len];
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    echo_one(conn, &mut buf, timeout);
                }
            })?;
        }
        Ok(Echo { addr })
    }

    /// Where the echo server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Reads `buf.len()` bytes and writes them back; any error just ends the connection (the client
/// sees it as a short or missing echo). Closing after the echo leaves nothing unread, so the
/// close is a clean FIN, never a reset.
fn echo_one(mut conn: TcpStream, buf: &mut [u8], timeout: Duration) {
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    let _ = conn.set_nodelay(true);
    if conn.read_exact(buf).is_ok() {
        let _ = conn.write_all(buf);
    }
}

/// A loopback echo server for long-lived tunnels: every connection echoes whatever arrives until
/// the peer closes, all on one thread (tokio, current-thread), so thousands of idle connections
/// cost a small task each rather than a thread. Counts the connections it holds open.
#[derive(Debug)]
pub struct IdleEcho {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

impl IdleEcho {
    /// Binds 127.0.0.1 on a free port and starts serving on a thread of its own, which lives
    /// until the process exits.
    pub fn spawn() -> Result<IdleEcho> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the idle echo server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&open);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        thread::Builder::new().name("idle-echo".into()).spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                loop {
                    match listener.accept().await {
                        Ok((conn, _)) => {
                            tokio::spawn(echo_until_closed(conn, Arc::clone(&counter)));
                        }
                        // Out of descriptors, say: back off instead of spinning.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            })
        })?;
        Ok(IdleEcho { addr, open })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

async fn echo_until_closed(mut conn: tokio::net::TcpStream, open: Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    open.fetch_add(1, Ordering::Relaxed);
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    open.fetch_sub(1, Ordering::Relaxed);
}
