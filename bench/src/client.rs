//! Our own client: one blocking tunnel (any protocol of [`crate::protocol`], optionally inside
//! TLS) through the proxy to the sink, carrying one upload or download and checking every byte
//! of it.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::pattern::{self, Ack, Flow, Request, Verifier, ACK_LEN};
use crate::protocol::{Dialer, Tunnel};

/// What one stream moved, as the client saw it.
#[derive(Debug, Clone, Copy)]
pub struct StreamOutcome {
    /// Payload bytes that arrived intact at the other end.
    pub bytes: u64,
}

/// How to reach the sink through a proxy.
#[derive(Debug, Clone)]
pub struct Client {
    /// The proxy, its protocol and credentials.
    pub dialer: Dialer,
    /// The sink, as the destination in the request header.
    pub sink: SocketAddr,
}

impl Client {
    /// Runs one stream: connect, send the header and request, move `req.len` bytes, verify.
    pub fn run(&self, req: Request, timeout: Duration) -> Result<StreamOutcome> {
        self.run_metered(req, timeout, None)
    }

    /// [`run`](Self::run), counting every byte moved on the socket into `meter` as it goes; the
    /// stream ends with a [`Stopped`] error once the meter is stopped.
    pub fn run_metered(&self, req: Request, timeout: Duration, meter: Option<&Meter>) -> Result<StreamOutcome> {
        self.try_run(req, timeout, meter).map_err(|e| {
            let stalled = e
                .chain()
                .filter_map(|c| c.downcast_ref::<io::Error>())
                .any(|io| matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
            if stalled {
                e.context(format!("stream made no progress within {timeout:?}"))
            } else {
                e
            }
        })
    }

    fn try_run(&self, req: Request, timeout: Duration, meter: Option<&Meter>) -> Result<StreamOutcome> {
        let deadline = Instant::now() + timeout;
        let conn = self.dialer.connect(self.sink, timeout)?;
        let mut conn = Metered { conn, meter };

        let mut head = Vec::with_capacity(pattern::REQUEST_LEN);
        req.encode(&mut head);

        match req.flow {
            Flow::Up => {
                pattern::send_pattern(&mut conn, &head, req.start, req.len, deadline).context("sending the upload")?;
                let mut ack = [0u8; ACK_LEN];
                conn.read_exact(&mut ack).context("reading the sink's acknowledgement")?;
                let ack = Ack::decode(&ack);
                if ack.received != req.len {
                    bail!("sink received {} of {} bytes", ack.received, req.len);
                }
                if !ack.intact {
                    bail!("sink received corrupted payload");
                }
            }
            Flow::Down => {
                pattern::send_pattern(&mut conn, &head, req.start, 0, deadline).context("sending the request")?;
                let mut verifier = Verifier::new(req.start);
                let mut buf = vec![0u8; pattern::CHUNK];
                pattern::recv_pattern(&mut conn, &mut verifier, req.len, &mut buf, deadline)
                    .context("receiving the download")?;
                if !verifier.intact() {
                    bail!("received corrupted payload");
                }
            }
        }
        conn.conn.close();
        Ok(StreamOutcome { bytes: req.len })
    }
}

/// Bytes moved by one long-running stream, shared with whoever watches it; a paced meter also
/// holds the stream to a rate.
#[derive(Debug, Default)]
pub struct Meter {
    bytes: AtomicU64,
    stop: AtomicBool,
    pace: Option<Pace>,
}

/// A client-side rate: the stream moves at most `rate` bytes per second from its first read or
/// write on, in steps of 1/32 s of it (so the kernel's buffers, not a burst, absorb the rest).
#[derive(Debug)]
struct Pace {
    rate: u64,
    started: OnceLock<Instant>,
}

impl Meter {
    /// A meter whose stream moves at most `rate` bytes per second (reads and writes together).
    pub fn paced(rate: u64) -> Meter {
        Meter { pace: Some(Pace { rate: rate.max(1), started: OnceLock::new() }), ..Meter::default() }
    }

    /// Bytes read or written on the stream's socket so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Asks the stream to end at its next read or write.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The error a metered stream ends with once its meter is stopped.
#[derive(Debug)]
pub struct Stopped;

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stopped by the harness")
    }
}

impl std::error::Error for Stopped {}

/// True when `e` is a stream's [`Stopped`] ending rather than a failure.
pub fn is_stopped(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|io| io.get_ref().is_some_and(|inner| inner.is::<Stopped>()))
}

/// The client's socket, counting into a meter when there is one.
struct Metered<'a> {
    conn: Tunnel,
    meter: Option<&'a Meter>,
}

impl Metered<'_> {
    fn count(&self, n: usize) -> io::Result<usize> {
        if let Some(meter) = self.meter {
            meter.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }

    fn check(&self) -> io::Result<()> {
        match self.meter {
            Some(m) if m.stop.load(Ordering::Relaxed) => Err(io::Error::other(Stopped)),
            _ => Ok(()),
        }
    }

    /// With a paced meter, waits until the stream is due its next step and returns how many
    /// bytes it may move in it; otherwise `len` at once.
    fn step(&self, len: usize) -> usize {
        let Some((meter, pace)) = self.meter.and_then(|m| Some((m, m.pace.as_ref()?))) else { return len };
        let started = *pace.started.get_or_init(Instant::now);
        let due = started + Duration::from_secs_f64(meter.bytes() as f64 / pace.rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        len.min((pace.rate / 32).max(1) as usize)
    }
}

impl Read for Metered<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        let len = self.step(buf.len());
        let n = self.conn.read(&mut buf[..len])?;
        self.count(n)
    }
}

impl Write for Metered<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        let len = self.step(buf.len());
        let n = self.conn.write(&buf[..len])?;
        self.count(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}
