//! Name resolution off the shard: the `dns` object's resolver on the control thread, or the
//! system resolver on glommio's blocking pool, so a slow DNS server never stalls the shard's
//! other sessions.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use shardray_core::spec::DomainStrategy;
use shardray_wire::addr::Address;

use crate::ctx::ShardCtx;
use crate::dns::{Family, LookupError};

/// Resolves a session's destination for freedom's `strategy` (or routing, with `UseIp`): as
/// Xray, `AsIs` asks the system resolver and the `UseIP*` strategies the `dns` object, when
/// the config has one.
pub(crate) async fn resolve(
    ctx: &ShardCtx,
    addr: &Address,
    port: u16,
    strategy: DomainStrategy,
) -> io::Result<Vec<SocketAddr>> {
    let dns = ctx.dns.as_ref().filter(|_| ctx.config.dns.is_some());
    let (Some(dns), Address::Domain(name)) = (dns, addr) else {
        return resolve_system(addr, port, strategy).await;
    };
    let family = match strategy {
        DomainStrategy::AsIs => return resolve_system(addr, port, strategy).await,
        DomainStrategy::UseIp => Family::Any,
        DomainStrategy::UseIpv4 => Family::V4,
        DomainStrategy::UseIpv6 => Family::V6,
    };
    match dns.lookup(name, family).await {
        Ok(ips) if !ips.is_empty() => Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()),
        Ok(_) | Err(LookupError::NoAddress) => {
            Err(io::Error::new(io::ErrorKind::NotFound, "name has no address of the wanted family"))
        }
        Err(e @ LookupError::NoName) => Err(io::Error::new(io::ErrorKind::NotFound, e.to_string())),
        Err(e @ LookupError::Rcode(_)) => Err(io::Error::other(e.to_string())),
        Err(LookupError::Failed(why)) => Err(io::Error::other(why)),
    }
}

/// How long a shard reuses the system resolver's answer for a name. getaddrinfo gives no
/// TTL; without this every connection to a name would cost a trip through the blocking pool
/// and a fresh lookup (glibc keeps no cache of its own unless nscd runs).
const SYSTEM_ANSWER_SECS: u64 = 10;
/// Names a shard remembers at most; past it, expired answers go, then all.
const SYSTEM_ANSWERS: usize = 4096;

/// Recent system-resolver answers: name → (addresses, until).
type SystemAnswers = std::collections::HashMap<Box<str>, (Vec<std::net::IpAddr>, Instant)>;

thread_local! {
    /// This shard's answers. Per thread, so per shard: no lock, nothing shared.
    static SYSTEM_CACHE: std::cell::RefCell<SystemAnswers> = Default::default();
}

/// The system resolver's addresses for `name`, from this shard's cache when fresh.
async fn system_lookup(name: &str) -> io::Result<Vec<std::net::IpAddr>> {
    let now = Instant::now();
    let cached =
        SYSTEM_CACHE.with_borrow(|c| c.get(name).filter(|(_, until)| *until > now).map(|(ips, _)| ips.clone()));
    if let Some(ips) = cached {
        return Ok(ips);
    }
    let owned = name.to_owned();
    let found = glommio::executor()
        .spawn_blocking(move || (owned.as_str(), 0).to_socket_addrs().map(|it| it.map(|a| a.ip()).collect::<Vec<_>>()))
        .await?;
    SYSTEM_CACHE.with_borrow_mut(|c| {
        if found.is_empty() {
            return;
        }
        if c.len() >= SYSTEM_ANSWERS {
            c.retain(|_, (_, until)| *until > now);
            if c.len() >= SYSTEM_ANSWERS {
                c.clear();
            }
        }
        c.insert(name.into(), (found.clone(), now + Duration::from_secs(SYSTEM_ANSWER_SECS)));
    });
    Ok(found)
}

/// Resolves `addr` with the system resolver, filtered by `strategy`'s address family.
pub(crate) async fn resolve_system(addr: &Address, port: u16, strategy: DomainStrategy) -> io::Result<Vec<SocketAddr>> {
    let name = match addr {
        Address::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
        Address::Domain(d) => d,
    };
    let found: Vec<SocketAddr> = system_lookup(name)
        .await?
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .filter(|a| match strategy {
            DomainStrategy::UseIpv4 => a.is_ipv4(),
            DomainStrategy::UseIpv6 => a.is_ipv6(),
            DomainStrategy::AsIs | DomainStrategy::UseIp => true,
        })
        .collect();
    if found.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "name has no address of the wanted family"));
    }
    Ok(found)
}

/// Resolves `dest` and connects to its first address that answers, each attempt bounded by
/// `DIAL_TIMEOUT` (a server or fallback target that drops SYNs would otherwise hold the
/// session for the kernel's two minutes). No destination-safety check: for addresses the
/// operator configured (outbound servers, fallback and REALITY targets), not a user's.
pub(crate) async fn connect_configured(dest: &shardray_wire::addr::Destination) -> io::Result<glommio::net::TcpStream> {
    connect_configured_via(dest, &Via::default()).await
}

/// `connect_configured` from an outbound's sockets (`via`).
pub(crate) async fn connect_configured_via(
    dest: &shardray_wire::addr::Destination,
    via: &Via,
) -> io::Result<glommio::net::TcpStream> {
    let addrs = resolve_system(&dest.addr, dest.port, Default::default()).await?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match connect_via(addr, via).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// How an outbound makes its sockets: `sendThrough` and `streamSettings.sockopt`. The default
/// is the kernel's choice of everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Via {
    /// The local address to send from.
    pub(crate) bind: Option<std::net::IpAddr>,
    /// Options to set before connecting; `None` when the config sets none.
    pub(crate) sockopt: Option<std::sync::Arc<shardray_core::spec::SocketOptions>>,
}

impl Via {
    pub(crate) fn of(spec: &shardray_core::spec::OutboundSpec) -> Via {
        let sockopt = (*spec.sockopt != Default::default()).then(|| std::sync::Arc::new((*spec.sockopt).clone()));
        Via { bind: spec.send_through, sockopt }
    }

    /// Makes a socket for `addr` as configured, before it binds or connects.
    fn socket(&self, addr: SocketAddr, kind: socket2::Type) -> io::Result<socket2::Socket> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, None)?;
        if let Some(opts) = &self.sockopt {
            let side = if kind == socket2::Type::DGRAM {
                crate::sockopt::Side::Datagram
            } else {
                crate::sockopt::Side::Dialer
            };
            crate::sockopt::apply(&socket, opts, side)?;
        }
        if let Some(ip) = self.bind {
            socket
                .bind(&SocketAddr::new(ip, 0).into())
                .map_err(|e| io::Error::new(e.kind(), format!("sendThrough {ip} for {addr}: {e}")))?;
        }
        Ok(socket)
    }

    /// A UDP socket for datagrams to `addr`'s family, bound as configured.
    pub(crate) fn udp_socket(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        let socket = self.socket(addr, socket2::Type::DGRAM)?;
        if self.bind.is_none() {
            let any = match addr {
                SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
                SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            };
            socket.bind(&any.into())?;
        }
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    }
}

/// Connects to `addr` from `via`'s sockets, bounded by `DIAL_TIMEOUT`. With nothing configured
/// this is glommio's own connect; otherwise the socket is made and set up first (SO_MARK, the
/// interface and the source address count only when set before the SYN, which glommio's
/// connect offers no way to do) and connected on the blocking pool, then handed to the shard.
pub(crate) async fn connect_via(addr: SocketAddr, via: &Via) -> io::Result<glommio::net::TcpStream> {
    if *via == Via::default() {
        return Ok(glommio::net::TcpStream::connect_timeout(addr, super::DIAL_TIMEOUT).await?);
    }
    let socket = via.socket(addr, socket2::Type::STREAM)?;
    let socket = glommio::executor()
        .spawn_blocking(move || socket.connect_timeout(&addr.into(), super::DIAL_TIMEOUT).map(|()| socket))
        .await?;
    socket.set_nonblocking(true)?;
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor is a connected TCP socket that nothing else owns any more.
    Ok(unsafe { glommio::net::TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_answers_are_reused_until_they_expire() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let found = system_lookup("localhost").await.unwrap();
                assert!(found.iter().any(|ip| ip.is_loopback()), "{found:?}");
                assert!(SYSTEM_CACHE.with_borrow(|c| c.contains_key("localhost")));

                // While an entry is fresh it is the answer (a planted one here, so the test
                // asks the system for nothing but `localhost`, which /etc/hosts answers)...
                let planted = vec!["192.0.2.7".parse().unwrap()];
                let fresh = Instant::now() + Duration::from_secs(5);
                SYSTEM_CACHE.with_borrow_mut(|c| c.insert("localhost".into(), (planted.clone(), fresh)));
                assert_eq!(system_lookup("localhost").await.unwrap(), planted);
                let dest = Address::Domain("localhost".into());
                let addrs = resolve_system(&dest, 443, DomainStrategy::UseIpv6).await;
                assert_eq!(addrs.unwrap_err().kind(), io::ErrorKind::NotFound);

                // ...and once it has expired the name is looked up again and the answer kept.
                let stale = Instant::now() - Duration::from_secs(1);
                SYSTEM_CACHE.with_borrow_mut(|c| c.insert("localhost".into(), (planted, stale)));
                assert_eq!(system_lookup("localhost").await.unwrap(), found);
                assert!(SYSTEM_CACHE
                    .with_borrow(|c| c.get("localhost").is_some_and(|(ips, until)| *ips == found && *until > stale)));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
