//! UDP on loopback: an echo server, a SOCKS5 UDP ASSOCIATE client (to drive sing-box's socks
//! inbound), and a windowed datagram exchange that checks every reply byte for byte.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Echoes every datagram back to its sender until dropped; counts what it saw.
pub struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Datagrams received.
    pub datagrams: Arc<AtomicU64>,
    /// Senders seen (distinct source addresses), in the order they first appeared.
    pub sources: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

impl UdpEcho {
    /// Starts on an ephemeral loopback port.
    pub fn start() -> UdpEcho {
        UdpEcho::start_at("127.0.0.1:0".parse().unwrap())
    }

    /// Starts on `addr` (a port a TCP server has, say).
    pub fn start_at(addr: SocketAddr) -> UdpEcho {
        let socket = UdpSocket::bind(addr).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let datagrams = Arc::new(AtomicU64::new(0));
        let sources = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, count, seen) = (stop.clone(), datagrams.clone(), sources.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    count.fetch_add(1, Ordering::Relaxed);
                    let mut seen = seen.lock().unwrap();
                    if !seen.contains(&from) {
                        seen.push(from);
                    }
                    drop(seen);
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho { addr, stop, datagrams, sources }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A way to send datagrams to a destination and read replies, whatever carries them.
pub trait DatagramPath {
    /// Sends `payload` towards `dest`.
    fn send(&self, dest: SocketAddr, payload: &[u8]) -> io::Result<()>;
    /// The next reply: its source and payload (timeout: an error).
    fn recv(&self) -> io::Result<(SocketAddr, Vec<u8>)>;
}

/// A plain UDP socket that sends straight to a fixed address (a dokodemo-door inbound), for
/// whatever destination it is asked; replies' sources are the inbound's.
pub struct Direct {
    /// The socket, connected to the inbound.
    pub socket: UdpSocket,
}

impl Direct {
    /// A socket on loopback connected to `to`, with a 10 s read timeout.
    pub fn to(to: SocketAddr) -> Direct {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(to).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Direct { socket }
    }
}

impl DatagramPath for Direct {
    fn send(&self, _: SocketAddr, payload: &[u8]) -> io::Result<()> {
        self.socket.send(payload).map(drop)
    }

    fn recv(&self) -> io::Result<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 65536];
        let n = self.socket.recv(&mut buf)?;
        buf.truncate(n);
        Ok((self.socket.peer_addr()?, buf))
    }
}

/// A SOCKS5 UDP association: the control connection (the association lives while it does)
/// and the client's UDP socket, talking to the relay address the proxy answered.
pub struct Socks5Udp {
    /// The control connection.
    pub control: TcpStream,
    socket: UdpSocket,
    /// The relay address the proxy answered.
    pub relay: SocketAddr,
}

impl Socks5Udp {
    /// Greets `proxy` (no authentication) and asks for UDP ASSOCIATE.
    pub fn associate(proxy: SocketAddr) -> io::Result<Socks5Udp> {
        let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&[5, 1, 0])?;
        let mut choice = [0u8; 2];
        s.read_exact(&mut choice)?;
        if choice != [5, 0] {
            return Err(io::Error::other(format!("socks greeting refused: {choice:?}")));
        }
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        let local = socket.local_addr()?;
        let IpAddr::V4(ip) = local.ip() else { unreachable!("bound on 127.0.0.1") };
        let mut req = vec![5, 3, 0, 1];
        req.extend_from_slice(&ip.octets());
        req.extend_from_slice(&local.port().to_be_bytes());
        s.write_all(&req)?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head)?;
        if head[1] != 0 {
            return Err(io::Error::other(format!("socks UDP ASSOCIATE refused: {head:?}")));
        }
        let relay = match head[3] {
            1 => {
                let mut a = [0u8; 6];
                s.read_exact(&mut a)?;
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])), u16::from_be_bytes([a[4], a[5]]))
            }
            4 => {
                let mut a = [0u8; 18];
                s.read_exact(&mut a)?;
                let ip: [u8; 16] = a[..16].try_into().unwrap();
                SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([a[16], a[17]]))
            }
            t => return Err(io::Error::other(format!("socks reply with address type {t}"))),
        };
        // An unspecified relay address means the proxy's own.
        let relay = if relay.ip().is_unspecified() { SocketAddr::new(proxy.ip(), relay.port()) } else { relay };
        Ok(Socks5Udp { control: s, socket, relay })
    }
}

impl Socks5Udp {
    /// Sends `datagram` as it is, header and all, from the association's client socket.
    pub fn send_raw(&self, datagram: &[u8]) -> io::Result<()> {
        self.socket.send_to(datagram, self.relay).map(drop)
    }

    /// The next datagram the relay sends back, header and all.
    pub fn recv_raw(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        let (n, _) = self.socket.recv_from(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

impl DatagramPath for Socks5Udp {
    fn send(&self, dest: SocketAddr, payload: &[u8]) -> io::Result<()> {
        let IpAddr::V4(ip) = dest.ip() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 destinations only"));
        };
        let mut d = vec![0, 0, 0, 1];
        d.extend_from_slice(&ip.octets());
        d.extend_from_slice(&dest.port().to_be_bytes());
        d.extend_from_slice(payload);
        self.socket.send_to(&d, self.relay).map(drop)
    }

    fn recv(&self) -> io::Result<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 65536];
        let (n, _) = self.socket.recv_from(&mut buf)?;
        let d = &buf[..n];
        if d.len() < 10 || d[3] != 1 {
            return Err(io::Error::other(format!("unexpected socks UDP reply header {:?}", &d[..d.len().min(10)])));
        }
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(d[4], d[5], d[6], d[7])), u16::from_be_bytes([d[8], d[9]]));
        Ok((src, d[10..].to_vec()))
    }
}

/// The `i`th test datagram: 1 to 1400 bytes, its content seeded by `i` and `seed`.
pub fn datagram(i: usize, seed: u64) -> Vec<u8> {
    let len = 1 + (i * 337 + seed as usize * 71) % 1400;
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `count` datagrams (`datagram(i, seed)`) to `dest` over `path`, at most `window`
/// unanswered at a time, and checks that each comes back byte for byte from `dest` (or from
/// `expect_source` when given). Returns the payload bytes sent (each way). Panics with `log`
/// on a loss, a stranger, or bytes that differ.
pub fn echo_datagrams(
    path: &dyn DatagramPath,
    dest: SocketAddr,
    expect_source: Option<SocketAddr>,
    count: usize,
    seed: u64,
    window: usize,
    log: &dyn Fn() -> String,
) -> u64 {
    let mut outstanding: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut in_flight = 0;
    let mut sent = 0;
    let mut total = 0u64;
    let source = expect_source.unwrap_or(dest);
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent < count || in_flight > 0 {
        while sent < count && in_flight < window {
            let d = datagram(sent, seed);
            total += d.len() as u64;
            path.send(dest, &d).unwrap();
            *outstanding.entry(d).or_default() += 1;
            sent += 1;
            in_flight += 1;
        }
        let (from, got) = path
            .recv()
            .unwrap_or_else(|e| panic!("{in_flight} of {sent} datagrams to {dest} unanswered: {e}\n{}", log()));
        assert_eq!(from, source, "a reply from a stranger\n{}", log());
        match outstanding.get_mut(&got) {
            Some(n) if *n > 0 => *n -= 1,
            _ => panic!("a reply of {} bytes that was never sent\n{}", got.len(), log()),
        }
        in_flight -= 1;
        assert!(Instant::now() < deadline, "too slow");
    }
    total
}

/// Our own VLESS UDP client (`Command::Udp`, packets `[len u16][payload]`), built on the `wire`
/// codec: one destination for the whole session, as the protocol has it.
pub struct VlessUdp {
    /// The session's stream.
    pub stream: TcpStream,
    dest: SocketAddr,
    header_read: AtomicBool,
}

impl VlessUdp {
    /// Opens a UDP session as `user` through `proxy` to `dest`; `first` packets go out with
    /// the header.
    pub fn open(proxy: SocketAddr, user: &str, dest: SocketAddr, first: &[&[u8]]) -> io::Result<VlessUdp> {
        use shardray_wire::vless::{Command, RequestHeader};
        let mut stream = crate::vless::connect(proxy)?;
        let header = RequestHeader {
            user: crate::vless::user_id(user),
            flow: String::new(),
            command: Command::Udp,
            destination: Some(dest.into()),
        };
        let mut out = Vec::new();
        header.encode(&mut out);
        for p in first {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        stream.write_all(&out)?;
        Ok(VlessUdp { stream, dest, header_read: AtomicBool::new(false) })
    }
}

impl DatagramPath for VlessUdp {
    fn send(&self, _: SocketAddr, payload: &[u8]) -> io::Result<()> {
        let mut out = (payload.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        (&self.stream).write_all(&out)
    }

    fn recv(&self) -> io::Result<(SocketAddr, Vec<u8>)> {
        if !self.header_read.swap(true, Ordering::Relaxed) {
            let mut head = [0u8; 2];
            (&self.stream).read_exact(&mut head)?;
            if head != [0, 0] {
                return Err(io::Error::other(format!("bad response header {head:?}")));
            }
        }
        let mut len = [0u8; 2];
        (&self.stream).read_exact(&mut len)?;
        let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
        (&self.stream).read_exact(&mut payload)?;
        Ok((self.dest, payload))
    }
}
