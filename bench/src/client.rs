//! Our own VLESS client: one blocking TCP stream through the proxy to the sink, carrying one
//! upload or download and checking every byte of it.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shardray_wire::addr::Destination;
use shardray_wire::vless::{Command, RequestHeader};
use uuid::Uuid;

use crate::pattern::{self, Ack, Flow, Request, Verifier, ACK_LEN};

/// What one stream moved, as the client saw it.
#[derive(Debug, Clone, Copy)]
pub struct StreamOutcome {
    /// Payload bytes that arrived intact at the other end.
    pub bytes: u64,
}

/// How to reach the sink through a VLESS proxy.
#[derive(Debug, Clone)]
pub struct VlessClient {
    /// The proxy's VLESS port.
    pub proxy: SocketAddr,
    /// The user id the proxy knows.
    pub user: Uuid,
    /// The sink, as the destination in the VLESS header.
    pub sink: SocketAddr,
}

impl VlessClient {
    /// Runs one stream: connect, send the header and request, move `req.len` bytes, verify.
    pub fn run(&self, req: Request, timeout: Duration) -> Result<StreamOutcome> {
        self.try_run(req, timeout).map_err(|e| {
            let stalled = e
                .chain()
                .filter_map(|c| c.downcast_ref::<io::Error>())
                .any(|io| {
                    matches!(
                        io.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    )
                });
            if stalled {
                e.context(format!("stream made no progress within {timeout:?}"))
            } else {
                e
            }
        })
    }

    fn try_run(&self, req: Request, timeout: Duration) -> Result<StreamOutcome> {
        let deadline = Instant::now() + timeout;
        let mut conn = TcpStream::connect_timeout(&self.proxy, timeout)
            .with_context(|| format!("connecting to the proxy at {}", self.proxy))?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        conn.set_nodelay(true)?;

        let mut head = Vec::with_capacity(64);
        RequestHeader {
            user: self.user,
            flow: String::new(),
            command: Command::Tcp,
            destination: Some(Destination::from(self.sink)),
        }
        .encode(&mut head);
        req.encode(&mut head);

        match req.flow {
            Flow::Up => {
                pattern::send_pattern(&mut conn, &head, req.start, req.len, deadline)
                    .context("sending the upload")?;
                read_response_header(&mut conn).context("reading the VLESS response")?;
                let mut ack = [0u8; ACK_LEN];
                conn.read_exact(&mut ack)
                    .context("reading the sink's acknowledgement")?;
                let ack = Ack::decode(&ack);
                if ack.received != req.len {
                    bail!("sink received {} of {} bytes", ack.received, req.len);
                }
                if !ack.intact {
                    bail!("sink received corrupted payload");
                }
            }
            Flow::Down => {
                pattern::send_pattern(&mut conn, &head, req.start, 0, deadline)
                    .context("sending the request")?;
                read_response_header(&mut conn).context("reading the VLESS response")?;
                let mut verifier = Verifier::new(req.start);
                let mut buf = vec![0u8; pattern::CHUNK];
                pattern::recv_pattern(&mut conn, &mut verifier, req.len, &mut buf, deadline)
                    .context("receiving the download")?;
                if !verifier.intact() {
                    bail!("received corrupted payload");
                }
            }
        }
        Ok(StreamOutcome { bytes: req.len })
    }
}

/// Reads and checks the VLESS response header: version 0, then addons we skip.
fn read_response_header(conn: &mut TcpStream) -> io::Result<()> {
    let mut head = [0u8; 2];
    conn.read_exact(&mut head)?;
    if head[0] != shardray_wire::vless::VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("response version {} is not 0", head[0]),
        ));
    }
    let mut addons = vec![0u8; head[1] as usize];
    conn.read_exact(&mut addons)
}
