//! Sniffing a TCP session's first payload (an inbound's `sniffing`), as Xray's dispatcher
//! does: read for a short, bounded time, never losing or reordering a byte.

use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt};
use shardray_core::stats::Refusal;
use shardray_wire::addr::{Address, Destination};
use shardray_wire::sniff::{sniff_tcp, Sniffed, UdpSniffer};

use crate::ctx::{ShardCtx, SniffRt};
use crate::packet::{PacketSource, Recv, MAX_DATAGRAM};

/// How long a session with no payload yet is waited for, in total (Xray's 200 ms).
const WAIT: Duration = Duration::from_millis(200);

/// At most this much is read ahead for a sniffer that needs more (a ClientHello fits).
const MAX_AHEAD: usize = 16 * 1024 + 5;

/// What the first payload turned out to be.
pub(super) struct Found {
    /// `tls`, `http1` or `bittorrent`: what `protocol` rules match.
    pub(super) protocol: &'static str,
    pub(super) domain: Option<String>,
}

/// Sniffs `early`, reading more from `client` into `first` (which then holds `early` and the
/// bytes read, in order) while a sniffer needs more, for `WAIT` at most.
pub(super) async fn first_payload<C>(client: &mut C, early: &[u8], first: &mut Vec<u8>) -> Option<Found>
where
    C: AsyncRead + Unpin + ?Sized,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let data: &[u8] = if first.is_empty() { early } else { first };
        if !data.is_empty() {
            match sniff_tcp(data) {
                Sniffed::Found { protocol, domain } => return Some(Found { protocol, domain }),
                // Our sniffers only say so when no more bytes could change it.
                Sniffed::NoClue => return None,
                Sniffed::NeedMore if data.len() >= MAX_AHEAD => return None,
                Sniffed::NeedMore => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        if first.is_empty() {
            first.extend_from_slice(early);
        }
        let start = first.len();
        first.resize(MAX_AHEAD.max(start + 1), 0);
        let read = futures_lite::future::or(async { Some(client.read(&mut first[start..]).await) }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        match read {
            Some(Ok(n)) if n > 0 => first.truncate(start + n),
            // End of stream, an error or the wait over: the relay sees the same next.
            _ => {
                first.truncate(start);
                return None;
            }
        }
    }
}

/// The destination a sniffed domain stands for, when `destOverride` names its protocol
/// (`http` for `http1`, as upstream compares prefixes), `domainsExcluded` does not list it and
/// `ipsExcluded` does not list the address the client named (`dest`).
pub(super) fn override_for(sniffing: &SniffRt, found: &Found, dest: &Address) -> Option<Address> {
    let domain = found.domain.as_deref().filter(|d| !d.is_empty())?;
    if let Address::Ip(ip) = dest {
        if sniffing.ips_excluded.contains(*ip) {
            return None;
        }
    }
    if !sniffing.dest_override.iter().any(|p| found.protocol.starts_with(p.as_str())) {
        return None;
    }
    if sniffing.excluded.matches(domain) {
        return None;
    }
    match domain.parse() {
        Ok(ip) => Some(Address::Ip(ip)),
        Err(_) if domain.len() <= 255 => Some(Address::Domain(domain.into())),
        Err(_) => None,
    }
}

/// A UDP session's first datagram (to `first`) and, while a QUIC ClientHello goes on past it, the next
/// ones (for `WAIT` in all, at most `MAX_SNIFF_DATAGRAMS`, as Xray's dispatcher caches them):
/// those are added to `held`, in order, for the caller to send after the first. Returns the
/// sniffed protocol (`quic`, `bittorrent`) and, when `destOverride` names it and
/// `domainsExcluded` does not, the name to route by.
pub(crate) async fn sniff_datagrams<I: PacketSource>(
    ctx: &ShardCtx,
    sniffing: &SniffRt,
    input: &mut I,
    first: &Destination,
    first_payload: &[u8],
    held: &mut Vec<(Destination, Vec<u8>)>,
) -> (Option<&'static str>, Option<Address>) {
    let mut sniffer = UdpSniffer::default();
    let mut answer = sniffer.push(first_payload);
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    while answer == Sniffed::NeedMore {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        buf.resize(MAX_DATAGRAM + 1, 0);
        let next = futures_lite::future::or(async { Some(input.recv(&mut buf).await) }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        match next {
            Some(Ok(Recv::Packet(dest, n))) => {
                answer = sniffer.push(&buf[..n]);
                held.push((dest, buf[..n].to_vec()));
            }
            Some(Ok(Recv::Oversize)) => ctx.refusals.add(Refusal::OversizeDatagram),
            // The end, an error or the wait over: the relay meets the same next.
            _ => break,
        }
    }
    match answer {
        Sniffed::Found { protocol, domain } => {
            let found = Found { protocol, domain };
            (Some(protocol), override_for(sniffing, &found, &first.addr))
        }
        _ => (None, None),
    }
}
