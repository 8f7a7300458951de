//! Name resolution off the shard: the system resolver runs on glommio's blocking pool, so a
//! slow DNS server never stalls the shard's other sessions.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use shardray_core::spec::DomainStrategy;
use shardray_wire::addr::Address;

/// Resolves `addr` to socket addresses, filtered by `strategy`'s address family.
pub(crate) async fn resolve(addr: &Address, port: u16, strategy: DomainStrategy) -> io::Result<Vec<SocketAddr>> {
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
    let addrs = resolve(&dest.addr, dest.port, Default::default()).await?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match glommio::net::TcpStream::connect_timeout(addr, super::DIAL_TIMEOUT).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}
