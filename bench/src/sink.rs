//! The far end of every benchmark stream: a loopback TCP server that swallows uploads and
//! produces downloads, checking and generating the payload pattern.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
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
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the sink")?;
        let addr = listener.local_addr()?;
        thread::Builder::new().name("sink-accept".into()).spawn(move || {
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
