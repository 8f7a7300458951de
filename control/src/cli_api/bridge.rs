//! Reaching an API on a Unix socket. tonic's channel dials TCP by itself; a custom connector
//! would need hyper's I/O traits, which this crate does not depend on. So the client relays:
//! it listens on an ephemeral 127.0.0.1 port inside this process, points the channel there,
//! and copies each accepted connection to a new connection on the socket.
//!
//! The relay must not widen who can reach the socket (whose file permissions may be tighter
//! than "any local user"): it forwards a connection only if the connecting socket belongs to
//! this very process, checked through /proc (the connecting socket's inode must be one of our
//! own file descriptors). Anything else is closed unread.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpListener, UnixStream};

use super::Failure;

/// Connects to the socket at `path` once (so a wrong path fails here, clearly), then starts
/// the relay; returns the loopback address to dial and the relay's task.
pub(super) async fn start(
    path: PathBuf,
    timeout: Duration,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Failure> {
    let shown = path.display().to_string();
    let first = match tokio::time::timeout(timeout, UnixStream::connect(&path)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Failure::Connect(format!("cannot connect to {shown}: {e}"))),
        Err(_) => {
            return Err(Failure::Connect(format!(
                "cannot connect to {shown}: no answer within {}s",
                timeout.as_secs()
            )))
        }
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| Failure::Connect(format!("cannot relay to {shown}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Connect(format!("cannot relay to {shown}: {e}")))?;
    let task = tokio::spawn(async move {
        let mut first = Some(first);
        loop {
            let Ok((mut tcp, peer)) = listener.accept().await else {
                return;
            };
            if !from_this_process(peer.port(), addr.port()) {
                continue;
            }
            let unix = match first.take() {
                Some(stream) => stream,
                None => match UnixStream::connect(&path).await {
                    Ok(stream) => stream,
                    Err(_) => continue,
                },
            };
            tokio::spawn(async move {
                let mut unix = unix;
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
            });
        }
    });
    Ok((addr, task))
}

/// Whether the TCP connection from local port `peer_port` to our relay port `relay_port` was
/// opened by a socket of this process.
fn from_this_process(peer_port: u16, relay_port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inode = table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = hex_port(fields.get(1)?)?;
        let remote = hex_port(fields.get(2)?)?;
        (local == peer_port && remote == relay_port)
            .then(|| fields.get(9).map(|s| s.to_string()))?
    });
    let Some(inode) = inode.filter(|i| i != "0") else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
    })
}

/// The port of a /proc/net/tcp address field (`0100007F:1F90`).
fn hex_port(field: &str) -> Option<u16> {
    u16::from_str_radix(field.rsplit_once(':')?.1, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_from_proc_fields() {
        assert_eq!(hex_port("0100007F:1F90"), Some(8080));
        assert_eq!(hex_port("00000000000000000000000001000000:0050"), Some(80));
        assert_eq!(hex_port("garbage"), None);
    }

    #[test]
    fn own_connections_are_recognised_and_others_are_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", relay)).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        assert_eq!(peer.port(), client.local_addr().unwrap().port());
        assert!(from_this_process(peer.port(), relay));
        // A connection this process does not hold: a port nobody uses.
        assert!(!from_this_process(1, relay));
    }
}
