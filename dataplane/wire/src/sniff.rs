//! Sniffers: what a session's first payload says about itself (Xray's `sniffing`).
//!
//! Each sniffer answers for a prefix of the stream: found (the protocol's name as Xray
//! reports it, and the domain it names, if any), "need more" (the bytes so far are this
//! protocol, but the name is further on), or "not this protocol".

/// A sniffer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// The protocol, as Xray names it (`tls`, `http1`, `bittorrent`), and the domain it
    /// names (none for BitTorrent).
    Found {
        /// The protocol's name.
        protocol: &'static str,
        /// The domain, lowercased, without a port.
        domain: Option<String>,
    },
    /// The bytes so far fit the protocol; more are needed to tell the name.
    NeedMore,
    /// Not a protocol we sniff.
    NoClue,
}

/// Sniffs the first bytes of a TCP stream: HTTP/1, TLS, then BitTorrent, as Xray orders them.
/// "Need more" wins over "not this protocol" only when no sniffer found anything.
pub fn sniff_tcp(data: &[u8]) -> Sniffed {
    let mut need_more = false;
    for sniffer in [sniff_http, sniff_tls, sniff_bittorrent] {
        match sniffer(data) {
            found @ Sniffed::Found { .. } => return found,
            Sniffed::NeedMore => need_more = true,
            Sniffed::NoClue => {}
        }
    }
    if need_more {
        Sniffed::NeedMore
    } else {
        Sniffed::NoClue
    }
}

/// The request methods Xray's HTTP sniffer accepts.
const METHODS: &[&[u8]] = &[b"get", b"post", b"head", b"put", b"delete", b"options", b"connect", b"patch", b"trace"];

/// Longest request head looked at: past it, a head without `Host` is given up.
const MAX_HEAD: usize = 8192;

/// An HTTP/1 request's `Host` (protocol `http1`).
pub fn sniff_http(data: &[u8]) -> Sniffed {
    let method_ok = METHODS.iter().any(|m| data.len() >= m.len() && data[..m.len()].eq_ignore_ascii_case(m));
    if !method_ok {
        // A prefix of a method could still become one.
        let prefix = !data.is_empty()
            && METHODS.iter().any(|m| data.len() < m.len() && m[..data.len()].eq_ignore_ascii_case(data));
        return if prefix { Sniffed::NeedMore } else { Sniffed::NoClue };
    }
    let head = &data[..data.len().min(MAX_HEAD)];
    // Only complete lines count; the request line is skipped.
    let complete = head.iter().rposition(|&b| b == b'\n').map_or(&head[..0], |p| &head[..p]);
    for line in complete.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // End of the head without a Host.
            return Sniffed::NoClue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if !line[..colon].eq_ignore_ascii_case(b"host") {
            continue;
        }
        let value = std::str::from_utf8(&line[colon + 1..]).unwrap_or("").trim();
        let host = strip_port(value).to_ascii_lowercase();
        if host.is_empty() {
            return Sniffed::NoClue;
        }
        return Sniffed::Found { protocol: "http1", domain: Some(host) };
    }
    if data.len() >= MAX_HEAD {
        Sniffed::NoClue
    } else {
        Sniffed::NeedMore
    }
}

/// An HTTP request's attributes, as routing rules' `attrs` match them: `:method`, `:path` and
/// each header field by its lowercase name (a later field of the same name replaces an
/// earlier one, as Xray's map does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttrs(Vec<(String, String)>);

impl RequestAttrs {
    /// Reads the attributes off a stream's first bytes as Xray's HTTP sniffer does: `None`
    /// unless they start with a request method. The request line gives `:method` and `:path`
    /// (the request target as sent) when it has three parts; the complete header lines before
    /// the blank line give the rest, values trimmed. Only what `data` holds counts: fields past
    /// it, or past the first 8 KiB, are not waited for.
    pub fn sniff(data: &[u8]) -> Option<RequestAttrs> {
        if !METHODS.iter().any(|m| data.len() >= m.len() && data[..m.len()].eq_ignore_ascii_case(m)) {
            return None;
        }
        let head = &data[..data.len().min(MAX_HEAD)];
        let complete = head.iter().rposition(|&b| b == b'\n').map_or(&head[..0], |p| &head[..p]);
        let mut lines = complete.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let mut attrs = RequestAttrs::default();
        if let Some(line) = lines.next() {
            let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            if let [method, path, _version] = parts[..] {
                attrs.set(":method", &String::from_utf8_lossy(method));
                attrs.set(":path", &String::from_utf8_lossy(path));
            }
        }
        for line in lines.take_while(|l| !l.is_empty()) {
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let name = String::from_utf8_lossy(&line[..colon]);
            attrs.set(&name, String::from_utf8_lossy(&line[colon + 1..]).trim());
        }
        Some(attrs)
    }

    /// Sets `name` (lowercased) to `value`, replacing an earlier value.
    pub fn set(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(pair) => pair.1 = value.to_owned(),
            None => self.0.push((name, value.to_owned())),
        }
    }

    /// Removes `name` (given in lowercase).
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    /// The value of `name` (given in lowercase).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every attribute, in the order first set.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// `host[:port]`, `[v6]:port` → the host.
fn strip_port(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => value,
    }
}

/// A TLS ClientHello's `server_name` (protocol `tls`); a ClientHello without one is still
/// TLS, with no domain. Reads the first record only, as Xray does.
pub fn sniff_tls(data: &[u8]) -> Sniffed {
    if data.is_empty() {
        return Sniffed::NeedMore;
    }
    if data[0] != 0x16 {
        return Sniffed::NoClue;
    }
    if data.len() < 5 {
        return Sniffed::NeedMore;
    }
    if data[1] != 3 {
        return Sniffed::NoClue;
    }
    let len = u16::from_be_bytes([data[3], data[4]]) as usize;
    if len == 0 || len > 16384 + 2048 {
        return Sniffed::NoClue;
    }
    if data.len() < 5 + len {
        return Sniffed::NeedMore;
    }
    match client_hello_sni(&data[5..5 + len]) {
        Some(domain) => Sniffed::Found { protocol: "tls", domain },
        None => Sniffed::NoClue,
    }
}

/// `Some(sni)` for a well-formed ClientHello handshake message, `None` otherwise.
fn client_hello_sni(mut msg: &[u8]) -> Option<Option<String>> {
    let b = &mut msg;
    if take(b, 1)?[0] != 1 {
        return None;
    }
    let len = be(take(b, 3)?);
    let mut body = take(b, len)?;
    let b = &mut body;
    take(b, 2 + 32)?; // version, random
    let sid = take(b, 1)?[0] as usize;
    take(b, sid)?;
    let suites = be(take(b, 2)?);
    take(b, suites)?;
    let comp = take(b, 1)?[0] as usize;
    take(b, comp)?;
    if b.is_empty() {
        return Some(None);
    }
    let ext_len = be(take(b, 2)?);
    let mut exts = take(b, ext_len)?;
    while !exts.is_empty() {
        let e = &mut exts;
        let kind = be(take(e, 2)?);
        let len = be(take(e, 2)?);
        let mut ext = take(e, len)?;
        if kind != 0 {
            continue;
        }
        let x = &mut ext;
        let list = be(take(x, 2)?);
        let mut list = take(x, list)?;
        while !list.is_empty() {
            let l = &mut list;
            let name_type = take(l, 1)?[0];
            let n = be(take(l, 2)?);
            let name = take(l, n)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                if name.is_empty() || name.ends_with('.') {
                    return None;
                }
                return Some(Some(name.to_ascii_lowercase()));
            }
        }
    }
    Some(None)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    crate::take(buf, n).ok()
}

fn be(b: &[u8]) -> usize {
    b.iter().fold(0, |acc, &x| (acc << 8) | x as usize)
}

/// The BitTorrent peer handshake (protocol `bittorrent`).
pub fn sniff_bittorrent(data: &[u8]) -> Sniffed {
    const HEAD: &[u8] = b"\x13BitTorrent protocol";
    if data.len() < HEAD.len() {
        return if HEAD.starts_with(data) && !data.is_empty() { Sniffed::NeedMore } else { Sniffed::NoClue };
    }
    if data.starts_with(HEAD) {
        Sniffed::Found { protocol: "bittorrent", domain: None }
    } else {
        Sniffed::NoClue
    }
}

/// QUIC versions whose Initial packets we can open: the salt, the label prefix, the Initial
/// packet type bits (RFC 9001, RFC 9369).
const QUIC_VERSIONS: &[(u32, [u8; 20], &str, u8)] = &[
    (
        1,
        [
            0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb,
            0x7f, 0x0a,
        ],
        "quic",
        0,
    ),
    (
        0x6b33_43cf,
        [
            0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd,
            0x2e, 0xd9,
        ],
        "quicv2",
        1,
    ),
];

/// A QUIC client's first datagram: its Initial packets opened with the version's keys, their
/// CRYPTO frames put in order, and the ClientHello's `server_name` read (protocol `quic`).
/// "Need more" when the ClientHello goes on in a later datagram (see `UdpSniffer`).
pub fn sniff_quic(datagram: &[u8]) -> Sniffed {
    UdpSniffer::default().quic(datagram)
}

/// Most datagrams a UDP session's sniffing reads: a ClientHello with a post-quantum key share
/// (Chrome's) takes two Initial packets; a few more allow for reordering and padding packets.
pub const MAX_SNIFF_DATAGRAMS: usize = 4;

/// Sniffs a UDP session's first datagrams, as Xray's dispatcher reads them: a QUIC Initial
/// (whose ClientHello may span several datagrams, each pushed in turn while the answer is
/// "need more"), else, on the first datagram only, BitTorrent's uTP or DHT.
#[derive(Debug, Default)]
pub struct UdpSniffer {
    /// The CRYPTO frames of the Initial packets opened so far, by offset.
    crypto: Vec<(u64, Vec<u8>)>,
    datagrams: usize,
}

impl UdpSniffer {
    /// The answer once `datagram`, the session's next one, is seen too. "Need more" only while
    /// a ClientHello is incomplete and fewer than `MAX_SNIFF_DATAGRAMS` were pushed.
    pub fn push(&mut self, datagram: &[u8]) -> Sniffed {
        self.datagrams += 1;
        if self.datagrams > 1 {
            return match self.quic(datagram) {
                Sniffed::NeedMore if self.datagrams >= MAX_SNIFF_DATAGRAMS => Sniffed::NoClue,
                other => other,
            };
        }
        match self.quic(datagram) {
            Sniffed::NoClue => {}
            other => return other,
        }
        if is_utp_syn(datagram) || is_dht(datagram) {
            return Sniffed::Found { protocol: "bittorrent", domain: None };
        }
        Sniffed::NoClue
    }

    /// Opens `datagram`'s Initial packets into the CRYPTO frames so far and reads the
    /// ClientHello they make; "not this" when the datagram opens nothing.
    fn quic(&mut self, datagram: &[u8]) -> Sniffed {
        let mut rest = datagram;
        let mut opened = false;
        while rest.len() > 5 && rest[0] & 0x80 != 0 {
            match quic_packet(rest, &mut self.crypto) {
                Some(used) => {
                    opened = true;
                    rest = &rest[used..];
                }
                None => break,
            }
        }
        if !opened {
            return Sniffed::NoClue;
        }
        self.crypto.sort_by_key(|(offset, _)| *offset);
        let mut hello = Vec::new();
        for (offset, data) in &self.crypto {
            let offset = *offset as usize;
            if offset > hello.len() {
                break;
            }
            let skip = hello.len() - offset;
            if skip < data.len() {
                hello.extend_from_slice(&data[skip..]);
            }
        }
        if hello.len() < 4 {
            return Sniffed::NeedMore;
        }
        if hello[0] != 1 {
            return Sniffed::NoClue;
        }
        let len = be(&hello[1..4]);
        if hello.len() < 4 + len {
            return Sniffed::NeedMore;
        }
        match client_hello_sni(&hello[..4 + len]) {
            Some(domain) => Sniffed::Found { protocol: "quic", domain },
            None => Sniffed::NoClue,
        }
    }
}

/// A uTP (BEP 29) connection's first packet: ST_SYN, version 1, the 20-byte header and its
/// extension chain filling the datagram exactly (a SYN carries no data).
///
/// Stricter than Xray, which takes any packet type but then compares the header's 32-bit,
/// wrapping microsecond clock with the full clock, so that it never matches; a SYN alone is
/// what a uTP session starts with, and two header bytes are too little to tell a protocol by.
fn is_utp_syn(d: &[u8]) -> bool {
    const ST_SYN: u8 = 4;
    if d.len() < 20 || d[0] != (ST_SYN << 4 | 1) {
        return false;
    }
    let (mut next, mut at) = (d[1], 20);
    while next != 0 {
        // Selective ACK (1) and extension bits (2) are the extensions BEP 29 and libutp know.
        if next > 2 || at + 2 > d.len() {
            return false;
        }
        next = d[at];
        at += 2 + d[at + 1] as usize;
    }
    at == d.len()
}

/// A BitTorrent DHT (BEP 5) KRPC query or response: a bencoded dictionary whose first key is
/// `a` (a query's arguments) or `r` (a response), itself starting with the 20-byte node `id`.
fn is_dht(d: &[u8]) -> bool {
    (d.starts_with(b"d1:ad2:id20:") || d.starts_with(b"d1:rd2:id20:")) && d.len() >= 12 + 20 + 2 && d.ends_with(b"e")
}

/// One long-header packet at the start of `data`: its length, with an Initial's CRYPTO
/// frames added to `crypto`; `None` if it is not a QUIC packet we can open.
fn quic_packet(data: &[u8], crypto: &mut Vec<(u64, Vec<u8>)>) -> Option<usize> {
    use ring::aead::{self, quic::HeaderProtectionKey, Aad, LessSafeKey, Nonce, UnboundKey};
    let mut b = &data[1..];
    let version = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
    let &(_, salt, label, initial_type) = QUIC_VERSIONS.iter().find(|v| v.0 == version)?;
    let dcid_len = take(&mut b, 1)?[0] as usize;
    if dcid_len > 20 {
        return None;
    }
    let dcid = take(&mut b, dcid_len)?;
    let scid_len = take(&mut b, 1)?[0] as usize;
    if scid_len > 20 {
        return None;
    }
    take(&mut b, scid_len)?;
    let is_initial = (data[0] >> 4) & 3 == initial_type;
    if is_initial {
        let token = varint(&mut b)? as usize;
        take(&mut b, token)?;
    }
    let length = varint(&mut b)? as usize;
    let pn_offset = data.len() - b.len();
    let end = pn_offset.checked_add(length)?;
    if end > data.len() {
        return None;
    }
    if !is_initial {
        // 0-RTT or Handshake packets coalesced behind: not ours to open.
        return Some(end);
    }
    let secret = initial_secret(&salt, dcid, "client in", 32)?;
    let key = expand_label(&secret, &format!("{label} key"), 16)?;
    let iv = expand_label(&secret, &format!("{label} iv"), 12)?;
    let hp = expand_label(&secret, &format!("{label} hp"), 16)?;
    let sample = data.get(pn_offset + 4..pn_offset + 20)?;
    let mask = HeaderProtectionKey::new(&aead::quic::AES_128, &hp).ok()?.new_mask(sample).ok()?;
    let mut header = data[..pn_offset + 4].to_vec();
    header[0] ^= mask[0] & 0x0f;
    let pn_len = (header[0] & 3) as usize + 1;
    header.truncate(pn_offset + pn_len);
    let mut pn = 0u64;
    for i in 0..pn_len {
        header[pn_offset + i] ^= mask[1 + i];
        pn = (pn << 8) | u64::from(header[pn_offset + i]);
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&iv);
    for (n, p) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
        *n ^= p;
    }
    let key = LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &key).ok()?);
    let mut payload = data.get(pn_offset + pn_len..end)?.to_vec();
    let plain = key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&header), &mut payload).ok()?;
    quic_frames(plain, crypto)?;
    Some(end)
}

/// The CRYPTO frames of an Initial payload; `None` for a frame an Initial may not hold.
fn quic_frames(mut p: &[u8], crypto: &mut Vec<(u64, Vec<u8>)>) -> Option<()> {
    let b = &mut p;
    while !b.is_empty() {
        match varint(b)? {
            0x00 | 0x01 => {} // PADDING, PING
            kind @ (0x02 | 0x03) => {
                // ACK: largest, delay, range count, first range, then the ranges (and ECN).
                varint(b)?;
                varint(b)?;
                let count = varint(b)?;
                varint(b)?;
                for _ in 0..count.min(1 << 16) {
                    varint(b)?;
                    varint(b)?;
                }
                if kind == 0x03 {
                    for _ in 0..3 {
                        varint(b)?;
                    }
                }
            }
            0x06 => {
                let offset = varint(b)?;
                let len = varint(b)? as usize;
                // A ClientHello is small: far offsets are not worth keeping.
                if offset > 1 << 16 {
                    return None;
                }
                crypto.push((offset, take(b, len)?.to_vec()));
            }
            0x1c => return Some(()), // CONNECTION_CLOSE: nothing more
            _ => return None,
        }
    }
    Some(())
}

/// A QUIC variable-length integer.
fn varint(b: &mut &[u8]) -> Option<u64> {
    let first = take(b, 1)?[0];
    let len = 1usize << (first >> 6);
    let mut v = u64::from(first & 0x3f);
    for &x in take(b, len - 1)? {
        v = (v << 8) | u64::from(x);
    }
    Some(v)
}

struct Len(usize);

impl ring::hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Extract(salt, dcid), then HKDF-Expand-Label(`label`).
fn initial_secret(salt: &[u8], dcid: &[u8], label: &str, len: usize) -> Option<Vec<u8>> {
    use ring::hkdf::{Salt, HKDF_SHA256};
    let prk = Salt::new(HKDF_SHA256, salt).extract(dcid);
    expand_prk(&prk, label, len)
}

fn expand_label(secret: &[u8], label: &str, len: usize) -> Option<Vec<u8>> {
    let prk = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, secret);
    expand_prk(&prk, label, len)
}

/// TLS 1.3's HkdfLabel: length, "tls13 " + label, an empty context.
fn expand_prk(prk: &ring::hkdf::Prk, label: &str, len: usize) -> Option<Vec<u8>> {
    let mut info = Vec::with_capacity(10 + label.len());
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push((6 + label.len()) as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label.as_bytes());
    info.push(0);
    let mut out = vec![0u8; len];
    prk.expand(&[&info], Len(len)).ok()?.fill(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls writes it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn tls_sni_from_rustls() {
        let hello = client_hello("Example.COM");
        assert_eq!(sniff_tcp(&hello), Sniffed::Found { protocol: "tls", domain: Some("example.com".into()) });
        // Every partial read asks for more, never "not TLS".
        for cut in 0..hello.len() {
            assert_eq!(sniff_tls(&hello[..cut]), Sniffed::NeedMore, "cut at {cut}");
        }
        // Trailing bytes (the next record) change nothing.
        let mut more = hello.clone();
        more.extend_from_slice(b"\x17\x03\x03\x00\x01x");
        assert_eq!(sniff_tls(&more), Sniffed::Found { protocol: "tls", domain: Some("example.com".into()) });
    }

    #[test]
    fn tls_without_sni_and_not_tls() {
        // An IP address as the server name: rustls sends no SNI.
        let hello = client_hello("127.0.0.1");
        assert_eq!(sniff_tls(&hello), Sniffed::Found { protocol: "tls", domain: None });
        assert_eq!(sniff_tls(b"\x17\x03\x03\x00\x10"), Sniffed::NoClue);
        assert_eq!(sniff_tls(b"\x16\x02"), Sniffed::NeedMore);
        assert_eq!(sniff_tls(b"\x16\x02\x00\x00\x10"), Sniffed::NoClue);
        let mut broken = hello.clone();
        broken[5] = 2; // a ServerHello
        assert_eq!(sniff_tls(&broken), Sniffed::NoClue);
    }

    #[test]
    fn http_host() {
        let req = b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: WWW.Example.org:8080\r\n\r\n";
        assert_eq!(sniff_tcp(req), Sniffed::Found { protocol: "http1", domain: Some("www.example.org".into()) });
        let req = b"post / HTTP/1.1\r\nhost:[::1]:80\r\n\r\n";
        assert_eq!(sniff_http(req), Sniffed::Found { protocol: "http1", domain: Some("::1".into()) });
        for m in ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH", "TRACE"] {
            let req = format!("{m} / HTTP/1.1\r\nHost: a.b\r\n\r\n");
            assert_eq!(sniff_http(req.as_bytes()), Sniffed::Found { protocol: "http1", domain: Some("a.b".into()) });
        }
        // Partial: the method so far, a line cut before the Host line ends.
        assert_eq!(sniff_http(b"PO"), Sniffed::NeedMore);
        assert_eq!(sniff_http(b"GET / HTTP/1.1\r\nHost: a.b"), Sniffed::NeedMore);
        assert_eq!(sniff_http(b"GET / HTTP/1.1\r\nAccept: x\r\n"), Sniffed::NeedMore);
        // Not HTTP, or a head without Host.
        assert_eq!(sniff_http(b"BREW / HTTP/1.1\r\n\r\n"), Sniffed::NoClue);
        assert_eq!(sniff_http(b"GET / HTTP/1.0\r\nAccept: x\r\n\r\n"), Sniffed::NoClue);
        assert_eq!(sniff_tcp(b"SSH-2.0-OpenSSH_9.6\r\n"), Sniffed::NoClue);
    }

    #[test]
    fn http_request_attrs() {
        let req =
            b"get /a/b?q=1 HTTP/1.1\r\nHost: a.b\r\nX-Route:  Blue \r\nx-route: green\r\nAccept:\r\n\r\nX-Body: no";
        let attrs = RequestAttrs::sniff(req).unwrap();
        // The method as sent, the target with its query, names lowercased, values trimmed.
        assert_eq!(attrs.get(":method"), Some("get"));
        assert_eq!(attrs.get(":path"), Some("/a/b?q=1"));
        assert_eq!(attrs.get("host"), Some("a.b"));
        // A later field of the same name wins; an empty value is still there.
        assert_eq!(attrs.get("x-route"), Some("green"));
        assert_eq!(attrs.get("accept"), Some(""));
        // Nothing after the blank line is a header.
        assert_eq!(attrs.get("x-body"), None);
        assert_eq!(attrs.iter().count(), 5);
        // A line not yet complete does not count; a request line without three parts gives
        // no method or path, and bytes that are not a request give nothing.
        let partial = RequestAttrs::sniff(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2").unwrap();
        assert_eq!((partial.get(":method"), partial.get("a"), partial.get("b")), (Some("GET"), Some("1"), None));
        let odd = RequestAttrs::sniff(b"GET /\r\nA: 1\r\n\r\n").unwrap();
        assert_eq!((odd.get(":method"), odd.get(":path"), odd.get("a")), (None, None, Some("1")));
        assert_eq!(RequestAttrs::sniff(b"\x16\x03\x01\x00\x05hello"), None);
        assert_eq!(RequestAttrs::sniff(b"GE"), None);
        // Bytes that are not UTF-8 never panic.
        assert!(RequestAttrs::sniff(b"GET /\xff HTTP/1.1\r\n\xfe: \xfd\r\n\r\n").is_some());
    }

    fn unhex(s: &str) -> Vec<u8> {
        let s = s.trim();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn quic_initial_from_rfc9001_appendix_a() {
        // RFC 9001 A.1: the client's Initial keys for this connection id.
        let secret = initial_secret(&QUIC_VERSIONS[0].1, &unhex("8394c8f03e515708"), "client in", 32).unwrap();
        assert_eq!(expand_label(&secret, "quic key", 16).unwrap(), unhex("1f369613dd76d5467730efcbe3b1a22d"));
        assert_eq!(expand_label(&secret, "quic iv", 12).unwrap(), unhex("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(expand_label(&secret, "quic hp", 16).unwrap(), unhex("9f50449e04a0e810283a1e9933adedd2"));
        // A.2: the client's protected Initial, whose ClientHello names example.com.
        let packet = unhex(include_str!("testdata/rfc9001-client-initial.hex"));
        assert_eq!(packet.len(), 1200);
        assert_eq!(sniff_quic(&packet), Sniffed::Found { protocol: "quic", domain: Some("example.com".into()) });
        // A bit changed anywhere fails the tag: not QUIC we can read.
        let mut bad = packet.clone();
        bad[600] ^= 1;
        assert_eq!(sniff_quic(&bad), Sniffed::NoClue);
        // Not QUIC at all, and a short header packet.
        assert_eq!(sniff_quic(b"\x00\x01hello"), Sniffed::NoClue);
        assert_eq!(sniff_quic(&[0x40; 64]), Sniffed::NoClue);
        // Cut short: the packet's length runs past the datagram.
        assert_eq!(sniff_quic(&packet[..1000]), Sniffed::NoClue);
    }

    /// Two Initial datagrams whose CRYPTO frames carry one ClientHello for www.example.com
    /// (rustls's, grown past one datagram by a large transport parameter, as a post-quantum
    /// key share grows Chrome's), built by `shardray_tests::quic::client_initials`.
    fn two_initials() -> Vec<Vec<u8>> {
        include_str!("testdata/quic-two-initials.hex").lines().map(unhex).collect()
    }

    #[test]
    fn a_client_hello_over_two_datagrams() {
        let d = two_initials();
        assert_eq!(d.len(), 2);
        let want = Sniffed::Found { protocol: "quic", domain: Some("www.example.com".into()) };
        // One datagram alone: QUIC, the name still to come.
        assert_eq!(sniff_quic(&d[0]), Sniffed::NeedMore);
        let mut s = UdpSniffer::default();
        assert_eq!(s.push(&d[0]), Sniffed::NeedMore);
        assert_eq!(s.push(&d[1]), want);
        // Reordered: the second half first is QUIC too, still waiting for offset 0.
        let mut s = UdpSniffer::default();
        assert_eq!(s.push(&d[1]), Sniffed::NeedMore);
        assert_eq!(s.push(&d[0]), want);
        // Both coalesced into one datagram read as one.
        assert_eq!(sniff_quic(&[d[0].clone(), d[1].clone()].concat()), want);
        // A later datagram that is not an Initial ends the wait without a name.
        let mut s = UdpSniffer::default();
        assert_eq!(s.push(&d[0]), Sniffed::NeedMore);
        assert_eq!(s.push(b"\x40not quic at all, a short header"), Sniffed::NoClue);
        // So does the datagram limit.
        let mut s = UdpSniffer::default();
        for _ in 1..MAX_SNIFF_DATAGRAMS {
            assert_eq!(s.push(&d[0]), Sniffed::NeedMore);
        }
        assert_eq!(s.push(&d[0]), Sniffed::NoClue);
    }

    /// A uTP SYN as libutp sends it: ST_SYN, version 1, no extension, a connection id, the
    /// clock, no reply delay yet, the window, seq 1, ack 0.
    fn utp_syn() -> Vec<u8> {
        let mut p = vec![0x41, 0x00, 0x30, 0x39];
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&0x0010_0000u32.to_be_bytes());
        p.extend_from_slice(&[0, 1, 0, 0]);
        p
    }

    #[test]
    fn bittorrent_over_udp() {
        let bt = Sniffed::Found { protocol: "bittorrent", domain: None };
        assert_eq!(UdpSniffer::default().push(&utp_syn()), bt);
        // With an extension-bits extension (libutp's 8 bytes).
        let mut ext = utp_syn();
        ext[1] = 2;
        ext.extend_from_slice(&[0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(UdpSniffer::default().push(&ext), bt);
        // Not a SYN, another version, data after it, a chain running past the end.
        for (at, value) in [(0, 0x01), (0, 0x42), (1, 9)] {
            let mut p = utp_syn();
            p[at] = value;
            assert_eq!(UdpSniffer::default().push(&p), Sniffed::NoClue, "byte {at} = {value}");
        }
        let mut data = utp_syn();
        data.push(0);
        assert_eq!(UdpSniffer::default().push(&data), Sniffed::NoClue);
        let mut cut = ext.clone();
        cut.pop();
        assert_eq!(UdpSniffer::default().push(&cut), Sniffed::NoClue);
        // DHT: BEP 5's ping query and its answer.
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let pong = b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re";
        assert_eq!(UdpSniffer::default().push(ping), bt);
        assert_eq!(UdpSniffer::default().push(pong), bt);
        assert_eq!(UdpSniffer::default().push(&ping[..20]), Sniffed::NoClue);
        // A DNS query is neither.
        let dns = unhex("abcd01000001000000000000076578616d706c6503636f6d0000010001");
        assert_eq!(UdpSniffer::default().push(&dns), Sniffed::NoClue);
        // Only the first datagram counts for BitTorrent.
        let mut s = UdpSniffer::default();
        assert_eq!(s.push(&two_initials()[0]), Sniffed::NeedMore);
        assert_eq!(s.push(ping), Sniffed::NoClue);
    }

    #[test]
    fn bittorrent_handshake() {
        let mut hs = b"\x13BitTorrent protocol".to_vec();
        hs.extend_from_slice(&[0; 8]);
        hs.extend_from_slice(&[7; 40]);
        assert_eq!(sniff_tcp(&hs), Sniffed::Found { protocol: "bittorrent", domain: None });
        assert_eq!(sniff_tcp(&hs[..10]), Sniffed::NeedMore);
        assert_eq!(sniff_bittorrent(b"\x13BitTorrent protocoX"), Sniffed::NoClue);
    }
}
