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
    fn bittorrent_handshake() {
        let mut hs = b"\x13BitTorrent protocol".to_vec();
        hs.extend_from_slice(&[0; 8]);
        hs.extend_from_slice(&[7; 40]);
        assert_eq!(sniff_tcp(&hs), Sniffed::Found { protocol: "bittorrent", domain: None });
        assert_eq!(sniff_tcp(&hs[..10]), Sniffed::NeedMore);
        assert_eq!(sniff_bittorrent(b"\x13BitTorrent protocoX"), Sniffed::NoClue);
    }
}
