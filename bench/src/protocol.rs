//! The proxy protocols the harness speaks as a client, and one blocking tunnel type for all of
//! them: [`Tunnel`] connects through a proxy to a destination and then reads and writes the
//! payload's plaintext, whatever framing the protocol puts around it on the wire.
//!
//! Every client is built on the sans-IO codecs of `shardray-wire`, as shardray's own outbounds
//! are; the harness adds only the blocking socket loop. Each protocol's credentials are derived
//! from the one user id a target is started with, so a config and the client always agree.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use shardray_wire::addr::Destination;
use shardray_wire::shadowsocks::{self as ss, MasterKey, Method};
use shardray_wire::vmess::{self, Options, ResponseHeader, SealRandom, SecurityConfig, UserKey, VmessError};
use shardray_wire::{socks, trojan, vless};
use uuid::Uuid;

use crate::tls::{ProxyStream, TlsClient};

/// A protocol the harness measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// VLESS, no flow.
    Vless,
    /// Trojan (normally over TLS).
    Trojan,
    /// VMess AEAD with an AES-128-GCM body.
    Vmess,
    /// Shadowsocks AEAD, `aes-128-gcm`.
    SsAes128Gcm,
    /// Shadowsocks 2022, `2022-blake3-aes-128-gcm`, one PSK.
    Ss2022,
    /// SOCKS5 CONNECT with username and password.
    Socks,
}

impl Protocol {
    /// Every protocol, in the order reports list them.
    pub const ALL: [Protocol; 6] =
        [Protocol::Vless, Protocol::Trojan, Protocol::Vmess, Protocol::SsAes128Gcm, Protocol::Ss2022, Protocol::Socks];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Vless => "vless",
            Protocol::Trojan => "trojan",
            Protocol::Vmess => "vmess",
            Protocol::SsAes128Gcm => "ss-aes-128-gcm",
            Protocol::Ss2022 => "ss-2022",
            Protocol::Socks => "socks",
        }
    }

    /// How reports name it, with `-tls` when it runs inside TLS.
    pub fn label(self, tls: bool) -> &'static str {
        match (self, tls) {
            (Protocol::Vless, false) => "vless",
            (Protocol::Vless, true) => "vless-tls",
            (Protocol::Trojan, false) => "trojan",
            (Protocol::Trojan, true) => "trojan-tls",
            (Protocol::Vmess, false) => "vmess",
            (Protocol::Vmess, true) => "vmess-tls",
            (Protocol::SsAes128Gcm, _) => "ss-aes-128-gcm",
            (Protocol::Ss2022, _) => "ss-2022",
            (Protocol::Socks, _) => "socks",
        }
    }

    /// Whether the harness serves it inside TLS with `--tls`: Shadowsocks and SOCKS are
    /// deployed without TLS, and the peers' configs for them have none.
    pub fn allows_tls(self) -> bool {
        matches!(self, Protocol::Vless | Protocol::Trojan | Protocol::Vmess)
    }

    /// Shadowsocks' method for the Shadowsocks protocols.
    pub fn ss_method(self) -> Option<Method> {
        match self {
            Protocol::SsAes128Gcm => Some(Method::Aes128Gcm),
            Protocol::Ss2022 => Some(Method::Blake3Aes128Gcm),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Protocol::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<_> = Protocol::ALL.iter().map(|p| p.name()).collect();
            format!("unknown protocol {s:?} ({})", names.join(", "))
        })
    }
}

/// Every protocol's credentials, derived from the target's one user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secrets {
    /// The VLESS and VMess user id.
    pub user: Uuid,
}

impl Secrets {
    /// The Trojan password, the classic Shadowsocks password and the SOCKS password.
    pub fn password(&self) -> String {
        self.user.simple().to_string()
    }

    /// The SOCKS username.
    pub fn socks_user(&self) -> &'static str {
        "bench"
    }

    /// The Shadowsocks 2022 PSK (16 bytes, for `2022-blake3-aes-128-gcm`): the id's bytes.
    pub fn psk(&self) -> [u8; 16] {
        *self.user.as_bytes()
    }

    /// [`psk`](Self::psk) in the base64 the configs take.
    pub fn psk_base64(&self) -> String {
        base64(&self.psk())
    }
}

/// Standard base64 with padding, for the 2022 PSK in configs.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], *group.get(1).unwrap_or(&0), *group.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Random bytes from the kernel, for salts, keys and nonces.
fn random(out: &mut [u8]) -> io::Result<()> {
    File::open("/dev/urandom")?.read_exact(out)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn invalid(what: &str, e: impl fmt::Debug) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e:?}"))
}

/// Room for the longest chunk any of the sealed protocols sends (a 2022 chunk of 0xFFFF bytes
/// with its sealed length and two tags; VMess's are shorter), and more to read into.
const RECV_BUF: usize = 128 * 1024;

/// A connection through a proxy to one destination: writes take plaintext and leave framed as
/// the protocol frames it (the request header leads the first write), reads give back the
/// destination's plaintext.
pub struct Tunnel {
    conn: ProxyStream,
    /// The request header, sent with the first write.
    lead: Vec<u8>,
    framing: Framing,
    /// Sealed bytes being written (sealed protocols only; reused).
    out: Vec<u8>,
    /// Received ciphertext at `recv[start..end]`, plaintext not yet handed out at
    /// `recv[plain.0..plain.1]` (sealed protocols only; allocated at the first read).
    recv: Vec<u8>,
    start: usize,
    end: usize,
    plain: (usize, usize),
    read_done: bool,
}

/// How payload bytes are framed on the wire.
#[allow(clippy::large_enum_variant)] // one per tunnel, held in place for its whole life
enum Framing {
    /// As they are (VLESS, Trojan, SOCKS once its handshake is done); VLESS's response
    /// header is read and checked before the first byte is handed out.
    Raw { vless_response: bool },
    /// VMess body chunks; the response header comes first.
    Vmess { sealer: vmess::ChunkSealer, opener: vmess::ChunkOpener, request: Option<Box<vmess::RequestHeader>> },
    /// Shadowsocks chunks; the opener exists once the response's salt (and 2022 header) is in.
    Ss { method: Method, key: MasterKey, salt: Vec<u8>, sealer: ss::ChunkSealer, opener: Option<ss::ChunkOpener> },
}

/// How to reach a destination through a proxy.
#[derive(Debug, Clone)]
pub struct Dialer {
    /// The proxy's port.
    pub proxy: SocketAddr,
    /// What it speaks.
    pub protocol: Protocol,
    /// The credentials it admits.
    pub secrets: Secrets,
    /// TLS to the proxy with these settings; plain TCP when `None`.
    pub tls: Option<TlsClient>,
    /// A fixed SO_SNDBUF for the connection instead of the kernel's autotuned one (which grows
    /// to megabytes on loopback), for slow streams whose writes should track what the proxy
    /// reads rather than what the kernel buffers.
    pub send_buffer: Option<u32>,
}

impl Dialer {
    /// Connects to the proxy (TLS handshake included), runs the protocol's handshake if it has
    /// one (SOCKS), and returns the tunnel to `dest`, its request header queued for the first
    /// write. Every step is bounded by `timeout`.
    pub fn connect(&self, dest: SocketAddr, timeout: Duration) -> Result<Tunnel> {
        self.connect_to(Destination::from(dest), timeout)
    }

    /// `connect`, to a destination that may be a name for the proxy to resolve.
    pub fn connect_to(&self, dest: Destination, timeout: Duration) -> Result<Tunnel> {
        let sock = TcpStream::connect_timeout(&self.proxy, timeout)
            .with_context(|| format!("connecting to the proxy at {}", self.proxy))?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        sock.set_nodelay(true)?;
        if let Some(size) = self.send_buffer {
            crate::sys::set_send_buffer(&sock, size).context("setting SO_SNDBUF")?;
        }
        let conn = ProxyStream::open(sock, self.tls.as_ref()).context("TLS handshake with the proxy")?;
        let name = self.protocol.name();
        Tunnel::start(conn, self.protocol, &self.secrets, dest).with_context(|| format!("starting the {name} request"))
    }
}

impl Tunnel {
    /// Builds the request for `dest` over `conn` (after a SOCKS handshake on it).
    pub fn start(
        mut conn: ProxyStream,
        protocol: Protocol,
        secrets: &Secrets,
        dest: Destination,
    ) -> io::Result<Tunnel> {
        let mut lead = Vec::with_capacity(128);
        let framing = match protocol {
            Protocol::Vless => {
                vless::RequestHeader {
                    user: secrets.user,
                    flow: String::new(),
                    command: vless::Command::Tcp,
                    destination: Some(dest),
                }
                .encode(&mut lead);
                Framing::Raw { vless_response: true }
            }
            Protocol::Trojan => {
                let key = trojan::password_key(&secrets.password());
                trojan::Request { key, command: trojan::Command::Connect, destination: dest }.encode(&mut lead);
                Framing::Raw { vless_response: false }
            }
            Protocol::Socks => {
                socks_handshake(&mut conn, secrets, dest)?;
                Framing::Raw { vless_response: false }
            }
            Protocol::Vmess => vmess_request(secrets, dest, &mut lead)?,
            Protocol::SsAes128Gcm | Protocol::Ss2022 => {
                let method = protocol.ss_method().expect("a Shadowsocks protocol");
                ss_request(method, secrets, &dest, &mut lead)?
            }
        };
        Ok(Tunnel {
            conn,
            lead,
            framing,
            out: Vec::new(),
            recv: Vec::new(),
            start: 0,
            end: 0,
            plain: (0, 0),
            read_done: false,
        })
    }

    /// The TCP socket under a plain (not TLS) tunnel, for non-blocking peeks.
    pub fn socket(&self) -> Option<&TcpStream> {
        match &self.conn {
            ProxyStream::Plain(s) => Some(s),
            ProxyStream::Tls(_) => None,
        }
    }

    /// Frees the receive buffer when it holds nothing (an idle tunnel keeps none).
    pub fn release_buffers(&mut self) {
        if self.start == self.end && self.plain.0 == self.plain.1 {
            self.recv = Vec::new();
            (self.start, self.end, self.plain) = (0, 0, (0, 0));
        }
        self.out = Vec::new();
    }

    /// Ends the session politely: VMess's end chunk, close_notify under TLS. The socket closes
    /// on drop.
    pub fn close(&mut self) {
        if let Framing::Vmess { sealer, .. } = &mut self.framing {
            if self.lead.is_empty() {
                self.out.clear();
                sealer.seal_end(&mut self.out);
                let _ = self.conn.write_all(&self.out);
            }
        }
        self.conn.close();
    }

    /// The next piece of plaintext from `recv[start..end]`: `Some(range)` (possibly empty),
    /// `None` when more bytes are needed; sets `read_done` at the stream's end chunk.
    fn open_next(&mut self) -> io::Result<Option<(usize, usize)>> {
        let buf = &mut self.recv[self.start..self.end];
        match &mut self.framing {
            Framing::Raw { .. } => unreachable!("raw tunnels read straight from the socket"),
            Framing::Vmess { opener, request, .. } => {
                let at;
                if let Some(req) = request {
                    match ResponseHeader::open(buf, req) {
                        Ok((_, consumed)) => at = consumed,
                        Err(VmessError::UnexpectedEnd) => return Ok(None),
                        Err(e) => return Err(invalid("the VMess response header", e)),
                    }
                    *request = None;
                    self.start += at;
                }
                let buf = &mut self.recv[self.start..self.end];
                match opener.open(buf) {
                    Ok(vmess::Chunk::Data { plain, consumed }) => {
                        let range = (self.start + plain.start, self.start + plain.end);
                        self.start += consumed;
                        Ok(Some(range))
                    }
                    Ok(vmess::Chunk::End { consumed }) => {
                        self.start += consumed;
                        self.read_done = true;
                        Ok(Some((self.start, self.start)))
                    }
                    Err(VmessError::UnexpectedEnd) => Ok(None),
                    Err(e) => Err(invalid("a VMess chunk", e)),
                }
            }
            Framing::Ss { method, key, salt, opener, .. } => {
                if opener.is_none() {
                    let opened = if method.is_2022() {
                        ss::ss2022::decode_response(*method, key, salt, buf, now_secs())
                    } else {
                        ss::classic::open_response(*method, key, buf)
                    };
                    match opened {
                        Ok((o, consumed)) => {
                            *opener = Some(o);
                            self.start += consumed;
                        }
                        Err(ss::Error::UnexpectedEnd) => return Ok(None),
                        Err(e) => return Err(invalid("the Shadowsocks response", e)),
                    }
                }
                let opener = opener.as_mut().expect("just set");
                match opener.open(&mut self.recv[self.start..self.end]) {
                    Ok(ss::Opened::Chunk { plain, consumed }) => {
                        let range = (self.start + plain.start, self.start + plain.end);
                        self.start += consumed;
                        Ok(Some(range))
                    }
                    Ok(ss::Opened::NeedMore { .. }) => Ok(None),
                    Err(e) => Err(invalid("a Shadowsocks chunk", e)),
                }
            }
        }
    }

    /// Sends the queued request header if nothing was written yet (a read came first).
    fn send_lead(&mut self) -> io::Result<()> {
        if self.lead.is_empty() {
            return Ok(());
        }
        self.conn.write_all(&self.lead)?;
        self.lead.clear();
        Ok(())
    }
}

impl Read for Tunnel {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.send_lead()?;
        if let Framing::Raw { vless_response } = &mut self.framing {
            if *vless_response {
                read_vless_response(&mut self.conn)?;
                *vless_response = false;
            }
            return self.conn.read(out);
        }
        if self.recv.is_empty() {
            self.recv = vec![0u8; RECV_BUF];
        }
        loop {
            let (from, to) = self.plain;
            if from < to {
                let n = out.len().min(to - from);
                out[..n].copy_from_slice(&self.recv[from..from + n]);
                self.plain.0 += n;
                return Ok(n);
            }
            if self.read_done {
                return Ok(0);
            }
            if let Some(range) = self.open_next()? {
                self.plain = range;
                continue;
            }
            // An incomplete chunk: read more behind it, moving it to the front at the end.
            if self.end == self.recv.len() {
                self.recv.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let n = self.conn.read(&mut self.recv[self.end..])?;
            if n == 0 {
                if self.start < self.end {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the proxy closed inside a chunk"));
                }
                // Shadowsocks has no end chunk: the end of the stream ends it.
                self.read_done = true;
                return Ok(0);
            }
            self.end += n;
        }
    }
}

impl Write for Tunnel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let sealer_out = &mut self.out;
        match &mut self.framing {
            Framing::Raw { .. } if self.lead.is_empty() => return self.conn.write(buf),
            Framing::Raw { .. } => {
                // The header and the first payload in one write, as real clients send them.
                self.lead.extend_from_slice(buf);
                self.conn.write_all(&self.lead)?;
                self.lead = Vec::new();
                return Ok(buf.len());
            }
            Framing::Vmess { sealer, .. } => {
                sealer_out.clear();
                sealer_out.append(&mut self.lead);
                sealer.seal(buf, sealer_out).map_err(|e| invalid("sealing a VMess chunk", e))?;
            }
            Framing::Ss { sealer, .. } => {
                sealer_out.clear();
                sealer_out.append(&mut self.lead);
                sealer.seal(buf, sealer_out);
            }
        }
        self.conn.write_all(&self.out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}

/// Reads and checks the VLESS response header: version 0, then addons we skip.
pub fn read_vless_response(conn: &mut impl Read) -> io::Result<()> {
    let mut head = [0u8; 2];
    conn.read_exact(&mut head)?;
    if head[0] != vless::VERSION {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("response version {} is not 0", head[0])));
    }
    let mut addons = vec![0u8; head[1] as usize];
    conn.read_exact(&mut addons)
}

/// SOCKS5 with username and password, one step at a time as RFC 1928 has it: greeting,
/// sub-negotiation, CONNECT, reply.
fn socks_handshake(conn: &mut ProxyStream, secrets: &Secrets, dest: Destination) -> io::Result<()> {
    let fail = |what: &str, e: socks::SocksError| invalid(what, e);
    let mut msg = Vec::with_capacity(64);
    socks::encode_greeting(&[socks::method::PASSWORD], &mut msg);
    conn.write_all(&msg)?;
    let mut two = [0u8; 2];
    conn.read_exact(&mut two)?;
    let method = socks::decode_method_reply(&mut &two[..]).map_err(|e| fail("the method reply", e))?;
    if method != socks::method::PASSWORD {
        return Err(invalid("the method reply", format!("method {method} instead of username/password")));
    }
    msg.clear();
    let password = secrets.password();
    socks::Credentials { username: secrets.socks_user().as_bytes(), password: password.as_bytes() }
        .encode(&mut msg)
        .map_err(|e| fail("the credentials", e))?;
    conn.write_all(&msg)?;
    conn.read_exact(&mut two)?;
    socks::decode_auth_reply(&mut &two[..]).map_err(|e| fail("the authentication reply", e))?;
    msg.clear();
    socks::Request { command: socks::Command::Connect, destination: dest }.encode(&mut msg);
    conn.write_all(&msg)?;
    // VER REP RSV ATYP, then an address whose length the type gives, then the port.
    let mut reply = vec![0u8; 5];
    conn.read_exact(&mut reply)?;
    let rest = match reply[3] {
        1 => 4 - 1 + 2,
        4 => 16 - 1 + 2,
        3 => usize::from(reply[4]) + 2,
        other => return Err(invalid("the CONNECT reply", format!("address type {other}"))),
    };
    reply.resize(5 + rest, 0);
    conn.read_exact(&mut reply[5..])?;
    socks::decode_reply(&mut &reply[..]).map_err(|e| fail("the CONNECT reply", e))?;
    Ok(())
}

/// A VMess AEAD request with an AES-128-GCM body and the options shardray's outbound sends;
/// the sealed header goes into `lead`.
fn vmess_request(secrets: &Secrets, dest: Destination, lead: &mut Vec<u8>) -> io::Result<Framing> {
    let (security, options): (_, Options) = SecurityConfig::Aes128Gcm.resolve(true, false);
    let mut r = [0u8; 16 + 16 + 1 + 4 + 8 + 1 + 15 + 32];
    random(&mut r)?;
    let take = |at: usize, n: usize| &r[at..at + n];
    let request = vmess::RequestHeader {
        body_iv: take(0, 16).try_into().expect("16 bytes"),
        body_key: take(16, 16).try_into().expect("16 bytes"),
        response_auth: r[32],
        options,
        security,
        command: vmess::Command::Tcp,
        destination: Some(dest),
    };
    let seal = SealRandom {
        auth_id: take(33, 4).try_into().expect("4 bytes"),
        nonce: take(37, 8).try_into().expect("8 bytes"),
        padding_len: r[45] % 16,
        padding: take(46, 15).try_into().expect("15 bytes"),
    };
    let seed: [u8; 32] = take(61, 32).try_into().expect("32 bytes");
    request.seal(&UserKey::new(&secrets.user), now_secs(), &seal, lead);
    let err = |e| invalid("the VMess request", e);
    let sealer = vmess::ChunkSealer::new(&request, vmess::Direction::Request, seed).map_err(err)?;
    let opener = vmess::ChunkOpener::new(&request, vmess::Direction::Response).map_err(err)?;
    Ok(Framing::Vmess { sealer, opener, request: Some(Box::new(request)) })
}

/// A Shadowsocks request (classic AEAD or 2022, one key): salt and header into `lead`.
fn ss_request(method: Method, secrets: &Secrets, dest: &Destination, lead: &mut Vec<u8>) -> io::Result<Framing> {
    let key = if method.is_2022() {
        MasterKey::from_bytes(&secrets.psk())
    } else {
        MasterKey::from_password(method, &secrets.password()).map_err(|e| invalid("the password", e))?
    };
    let mut salt = vec![0u8; method.salt_len()];
    random(&mut salt)?;
    let sealer = if method.is_2022() {
        let mut padding = [0u8; 2];
        random(&mut padding)?;
        ss::ss2022::ClientRequest {
            method,
            identities: &[],
            key: &key,
            salt: &salt,
            timestamp: now_secs(),
            destination: dest,
            padding_len: u16::from_be_bytes(padding) % 64,
        }
        .encode(&[], lead)
    } else {
        ss::classic::encode_request(method, &key, &salt, dest, &[], lead)
    };
    Ok(Framing::Ss { method, key, salt, sealer, opener: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_listed() {
        for p in Protocol::ALL {
            assert_eq!(p.name().parse::<Protocol>(), Ok(p));
        }
        let err = "ss".parse::<Protocol>().unwrap_err();
        assert!(err.contains("ss-2022") && err.contains("socks"), "{err}");
        assert_eq!(Protocol::Trojan.label(true), "trojan-tls");
        assert_eq!(Protocol::Vless.label(false), "vless");
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&(0u8..16).collect::<Vec<_>>()), "AAECAwQFBgcICQoLDA0ODw==");
        // The 2022 PSK a config carries decodes to the key the client uses.
        let s = Secrets { user: Uuid::from_u128(0x0001_0203_0405_0607_0809_0a0b_0c0d_0e0f) };
        assert_eq!(s.psk_base64(), "AAECAwQFBgcICQoLDA0ODw==");
        assert_eq!(
            MasterKey::from_psk(Method::Blake3Aes128Gcm, &s.psk_base64()).unwrap(),
            MasterKey::from_bytes(&s.psk())
        );
    }
}
