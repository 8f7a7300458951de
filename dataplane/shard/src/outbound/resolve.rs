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
