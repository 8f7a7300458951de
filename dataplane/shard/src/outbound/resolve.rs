//! Name resolution off the shard: the `dns` object's resolver on the control thread, or the
//! system resolver on glommio's blocking pool, so a slow DNS server never stalls the shard's
//! other sessions.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

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
        Err(LookupError::Failed(why)) => Err(io::Error::other(why)),
    }
}

/// Resolves `addr` with the system resolver, filtered by `strategy`'s address family.
pub(crate) async fn resolve_system(addr: &Address, port: u16, strategy: DomainStrategy) -> io::Result<Vec<SocketAddr>> {
    let name = match addr {
        Address::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
        Address::Domain(d) => d.to_string(),
    };
    let found = glommio::executor()
        .spawn_blocking(move || (name.as_str(), port).to_socket_addrs().map(|it| it.collect::<Vec<_>>()))
        .await?;
    let found: Vec<SocketAddr> = found
        .into_iter()
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
    let addrs = resolve_system(&dest.addr, dest.port, Default::default()).await?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match glommio::net::TcpStream::connect_timeout(addr, super::DIAL_TIMEOUT).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}
