//! The reference relay that shardray's CPU per GB is held against: it parses the VLESS request
//! header, admits one user, dials the destination and moves bytes both ways with splice(2).
//! Nothing else: no stats, no routing, no policy, a thread per direction. Whatever shardray
//! spends beyond this is the cost of being a real proxy.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

use anyhow::{bail, Context, Result};
use shardray_wire::vless::{RequestHeader, MAX_HEADER_LEN, RESPONSE_HEADER};
use shardray_wire::DecodeError;
use uuid::Uuid;

use crate::sys;

/// Bytes asked of each splice call, and the pipe capacity requested (the default
/// /proc/sys/fs/pipe-max-size; measured here, 64 KiB pipes cost ~1.7x the CPU and 4 MiB more too).
const SPLICE_LEN: usize = 1 << 20;

/// Listens on `listen` and relays every connection from `user`; runs until the process ends.
pub fn run(listen: SocketAddr, user: Uuid) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        thread::Builder::new().name("relay".into()).spawn(move || {
            if let Err(e) = relay(conn, user) {
                eprintln!("splice-relay: {e:#}");
            }
        })?;
    }
    Ok(())
}

fn relay(mut client: TcpStream, user: Uuid) -> Result<()> {
    let mut buf = vec![0u8; MAX_HEADER_LEN + 64 * 1024];
    let mut filled = 0;
    let (header, used) = loop {
        let n = client.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(()); // a probe that connected and left
        }
        filled += n;
        let mut cur = &buf[..filled];
        match RequestHeader::decode(&mut cur) {
            Ok(header) => break (header, filled - cur.len()),
            Err(DecodeError::UnexpectedEnd) if filled < MAX_HEADER_LEN => continue,
            Err(e) => bail!("bad request header: {e}"),
        }
    };
    if header.user != user {
        bail!("unknown user");
    }
    let Some(dest) = header.destination else { bail!("no destination (mux is not relayed)") };
    let Some(ip) = dest.addr.ip() else { bail!("domains are not resolved here") };
    let mut upstream = TcpStream::connect((ip, dest.port)).context("dialing the destination")?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    upstream.write_all(&buf[used..filled])?;
    client.write_all(&RESPONSE_HEADER)?;
    drop(buf);

    let (down_from, down_to) = (upstream.try_clone()?, client.try_clone()?);
    let down = thread::Builder::new().name("relay-down".into()).spawn(move || pump(&down_from, &down_to))?;
    let up = pump(&client, &upstream);
    let down = down.join().unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")));
    up.context("client to upstream")?;
    down.context("upstream to client")?;
    Ok(())
}

/// Splices `from` into `to` until `from` ends, then half-closes `to`.
fn pump(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let (pipe_r, pipe_w) = sys::pipe(SPLICE_LEN)?;
    loop {
        let n = sys::splice(from, &pipe_w, SPLICE_LEN)?;
        if n == 0 {
            break;
        }
        let mut moved = 0;
        while moved < n {
            match sys::splice(&pipe_r, to, n - moved)? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                m => moved += m,
            }
        }
    }
    to.shutdown(Shutdown::Write)
}
