//! The `dns` object's resolver, on the control thread: `hosts` first, then the servers in
//! Xray's order (those whose `domains` match the name, then the others as fallbacks), each a
//! hickory resolver (UDP, TCP, DoT, DoH) or the system's (`localhost`); answers filtered by
//! `expectIPs` and cached by their TTL in one cache for every shard. Shards send questions
//! over a channel; each is answered in a task of its own and the answer goes back through the
//! asking shard's mailbox.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, TokioResolver};
use ipnet::IpNet;
use shardray_core::log::LogSink;
use shardray_core::router::DomainList;
use shardray_core::spec::{DnsAddress, DnsServerSpec, DnsSpec, HostAnswer, LogLevel, NonIpQuery, QueryStrategy};
use shardray_shard::dns::{DnsAnswer, DnsQuestion, DnsRequest, Family, LookupError, MessageAnswer};
use shardray_shard::mailbox::ShardMailbox;
use shardray_shard::ShardCommand;
use shardray_wire::addr::{Address, Destination};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Names cached at most; past it, expired entries go, then everything.
const CACHE_ENTRIES: usize = 16 * 1024;
/// The TTL of an answer from `hosts` or the system resolver.
const FIXED_TTL: u32 = 10;
/// How long a query sent on (`nonIPQuery: skip`) may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(4);
/// How many `hosts` aliases are followed before giving up.
const ALIAS_DEPTH: usize = 5;

/// The resolver: immutable but for its cache.
pub struct DnsResolver {
    hosts: Vec<(DomainList, HostAnswer)>,
    servers: Vec<NameServer>,
    query_strategy: QueryStrategy,
    disable_cache: bool,
    disable_fallback: bool,
    disable_fallback_if_match: bool,
    cache: Mutex<HashMap<(Arc<str>, bool), Cached>>,
    log: LogSink,
    /// `log.dnsLog`: every query a server answers is logged.
    dns_log: bool,
}

/// One of `servers`, with its hickory client built at first use.
struct NameServer {
    label: String,
    spec: DnsServerSpec,
    domains: Option<DomainList>,
    client: tokio::sync::OnceCell<TokioResolver>,
}

/// A cached answer of one family.
struct Cached {
    ips: Vec<IpAddr>,
    until: Instant,
}

/// One family's answer: the addresses and their TTL in seconds (0: not to be cached).
type Found = (Vec<IpAddr>, u32);

impl DnsResolver {
    /// Builds the resolver for `spec` (`None`: no `dns` object, the system resolver alone, which
    /// the `dns` outbound asks then).
    pub fn new(spec: Option<&DnsSpec>, log: LogSink, dns_log: bool) -> Result<DnsResolver, String> {
        let default = DnsSpec::default();
        let spec = spec.unwrap_or(&default);
        // Consecutive entries with one answer (a `geosite:` key's domains) share a matcher.
        let mut hosts: Vec<(Vec<_>, HostAnswer)> = Vec::new();
        for mapping in &spec.hosts {
            match hosts.last_mut() {
                Some((domains, answer)) if *answer == mapping.answer => domains.push(mapping.domain.clone()),
                _ => hosts.push((vec![mapping.domain.clone()], mapping.answer.clone())),
            }
        }
        let hosts = hosts
            .into_iter()
            .map(|(domains, answer)| DomainList::new(&domains).map(|list| (list, answer)))
            .collect::<Result<_, _>>()?;
        let mut specs = spec.servers.clone();
        if specs.is_empty() {
            specs.push(DnsServerSpec {
                address: DnsAddress::Localhost,
                domains: Vec::new(),
                expect_ips: Vec::new(),
                expect_ips_prefer: false,
                unexpected_ips: Vec::new(),
                skip_fallback: false,
                query_strategy: None,
                timeout: Duration::from_secs(4),
                disable_cache: false,
            });
        }
        let servers = specs
            .into_iter()
            .map(|spec| {
                let domains = match spec.domains.is_empty() {
                    true => None,
                    false => Some(DomainList::new(&spec.domains)?),
                };
                Ok(NameServer { label: label(&spec.address), spec, domains, client: Default::default() })
            })
            .collect::<Result<_, String>>()?;
        Ok(DnsResolver {
            hosts,
            servers,
            query_strategy: spec.query_strategy,
            disable_cache: spec.disable_cache,
            disable_fallback: spec.disable_fallback,
            disable_fallback_if_match: spec.disable_fallback_if_match,
            cache: Mutex::default(),
            log,
            dns_log,
        })
    }

    /// The addresses of `name` (lowercase, no trailing dot) of `family`.
    pub async fn lookup(&self, name: &str, family: Family) -> Result<Vec<IpAddr>, LookupError> {
        self.lookup_ttl(name, family).await.map(|(ips, _)| ips)
    }

    /// `lookup` for a shard, with how many seconds the shard may keep the answer: its TTL
    /// left (a cached answer's remaining time), or 0 under `disableCache`. A server of its own
    /// with `disableCache` keeps every answer from the shards' caches, whichever server gave
    /// it: simpler than tracking which server answered, and never keeps what must not be kept.
    pub async fn lookup_for_shard(&self, name: &str, family: Family) -> (Result<Vec<IpAddr>, LookupError>, u32) {
        let found = self.lookup_ttl(name, family).await;
        let never = self.disable_cache || self.servers.iter().any(|s| s.spec.disable_cache);
        match found {
            Ok((ips, ttl)) => (Ok(ips), if never { 0 } else { ttl }),
            Err(e) => (Err(e), 0),
        }
    }

    /// `lookup`, with the smallest TTL of what answered.
    async fn lookup_ttl(&self, name: &str, family: Family) -> Result<Found, LookupError> {
        let (v4, v6) = match (family, self.query_strategy) {
            (Family::Any, QueryStrategy::UseIp) => (true, true),
            (Family::Any | Family::V4, QueryStrategy::UseIpv4) | (Family::V4, QueryStrategy::UseIp) => (true, false),
            (Family::Any | Family::V6, QueryStrategy::UseIpv6) | (Family::V6, QueryStrategy::UseIp) => (false, true),
            _ => return Err(LookupError::NoAddress),
        };
        let mut name = name.to_string();
        for _ in 0..ALIAS_DEPTH {
            match self.hosts.iter().find(|(domains, _)| domains.matches(&name)) {
                Some((_, HostAnswer::Ips(ips))) => {
                    let ips: Vec<IpAddr> =
                        ips.iter().copied().filter(|ip| (ip.is_ipv4() && v4) || (ip.is_ipv6() && v6)).collect();
                    if self.dns_log {
                        self.log.error(LogLevel::Warning, format_args!("dns: {name} -> {ips:?} from hosts"));
                    }
                    return match ips.is_empty() {
                        true => Err(LookupError::NoAddress),
                        false => Ok((ips, FIXED_TTL)),
                    };
                }
                Some((_, HostAnswer::Alias(other))) => name = other.clone(),
                None => break,
            }
        }
        let name: Arc<str> = name.into();
        match (v4, v6) {
            (true, true) => {
                let (a, aaaa) = tokio::join!(self.lookup_family(&name, false), self.lookup_family(&name, true));
                match (a, aaaa) {
                    (Ok((mut ips, t4)), Ok((more, t6))) => {
                        ips.extend(more);
                        Ok((ips, t4.min(t6)))
                    }
                    (Ok(found), Err(_)) | (Err(_), Ok(found)) => Ok(found),
                    (Err(LookupError::Failed(e)), Err(_)) | (Err(_), Err(LookupError::Failed(e))) => {
                        Err(LookupError::Failed(e))
                    }
                    (Err(e), Err(_)) => Err(e),
                }
            }
            (v4, _) => self.lookup_family(&name, !v4).await,
        }
    }

    /// One family of `name`: the cache, else the servers in order until one answers.
    async fn lookup_family(&self, name: &Arc<str>, v6: bool) -> Result<Found, LookupError> {
        if let Some(found) = self.cached(name, v6) {
            return Ok(found);
        }
        let mut outcome = Err(LookupError::Failed("no server answered".into()));
        for server in self.order(name) {
            let wanted = match server.spec.query_strategy {
                Some(QueryStrategy::UseIpv4) => !v6,
                Some(QueryStrategy::UseIpv6) => v6,
                _ => true,
            };
            if !wanted {
                continue;
            }
            let started = Instant::now();
            let asked = tokio::time::timeout(server.spec.timeout, server.query(name, v6)).await;
            let answer = match asked {
                Ok(Ok((ips, ttl))) => match server.expected(ips) {
                    Some(ips) => Ok((ips, ttl)),
                    None => Err(LookupError::NoAddress),
                },
                Ok(Err(e)) => Err(e),
                Err(_) => Err(LookupError::Failed(format!("{} timed out", server.label))),
            };
            if self.dns_log {
                let (kind, ms) = (if v6 { "AAAA" } else { "A" }, started.elapsed().as_millis());
                let said = match &answer {
                    Ok((ips, ttl)) => format!("{ips:?} (ttl {ttl})"),
                    Err(e) => e.to_string(),
                };
                self.log.error(
                    LogLevel::Warning,
                    format_args!("dns: {name} {kind} -> {said} from {} in {ms} ms", server.label),
                );
            }
            match answer {
                Ok((ips, ttl)) => {
                    if !self.disable_cache && !server.spec.disable_cache && ttl > 0 {
                        self.remember(name, v6, &ips, ttl);
                    }
                    return Ok((ips, ttl));
                }
                // What the name is (no address, no such name) outranks a server's error code,
                // which outranks no answer at all: the outbound answers the best of them.
                Err(e @ (LookupError::NoAddress | LookupError::NoName)) => outcome = Err(e),
                Err(e) => {
                    self.log.error(LogLevel::Info, format_args!("dns: {name}: {}: {e}", server.label));
                    let settled = |o: &Result<Found, LookupError>| match o {
                        Err(LookupError::NoAddress | LookupError::NoName) => 2,
                        Err(LookupError::Rcode(_)) => 1,
                        _ => 0,
                    };
                    if settled(&Err(e.clone())) >= settled(&outcome) {
                        outcome = Err(e);
                    }
                }
            }
        }
        outcome
    }

    /// The servers to ask for `name`, in Xray's order.
    fn order(&self, name: &str) -> Vec<&NameServer> {
        let (mut matched, others): (Vec<&NameServer>, Vec<&NameServer>) =
            self.servers.iter().partition(|s| s.domains.as_ref().is_some_and(|d| d.matches(name)));
        let fallback = !self.disable_fallback && (matched.is_empty() || !self.disable_fallback_if_match);
        if fallback {
            matched.extend(others.into_iter().filter(|s| !s.spec.skip_fallback));
        }
        if matched.is_empty() {
            matched.push(&self.servers[0]);
        }
        matched
    }

    fn cached(&self, name: &Arc<str>, v6: bool) -> Option<Found> {
        if self.disable_cache {
            return None;
        }
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(&(name.clone(), v6))?;
        let left = entry.until.checked_duration_since(Instant::now())?;
        Some((entry.ips.clone(), left.as_secs().max(1) as u32))
    }

    fn remember(&self, name: &Arc<str>, v6: bool, ips: &[IpAddr], ttl: u32) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        let until = Instant::now() + Duration::from_secs(u64::from(ttl));
        cache.insert((name.clone(), v6), Cached { ips: ips.to_vec(), until });
    }

    /// What a `dns` outbound does with `query`.
    pub async fn answer_message(
        &self,
        query: &[u8],
        non_ip_query: NonIpQuery,
        block_types: &[u16],
        forward: Option<(SocketAddr, bool)>,
    ) -> MessageAnswer {
        let Ok(request) = Message::from_vec(query) else { return MessageAnswer::Drop };
        let Some(question) = request.queries().first().cloned() else { return MessageAnswer::Drop };
        let qtype = question.query_type();
        let refused = || reply(&request, ResponseCode::Refused, Vec::new());
        if block_types.contains(&u16::from(qtype)) {
            return match non_ip_query {
                NonIpQuery::Reject => refused(),
                _ => MessageAnswer::Drop,
            };
        }
        let family = match qtype {
            RecordType::A => Family::V4,
            RecordType::AAAA => Family::V6,
            _ => {
                return match (non_ip_query, forward) {
                    (NonIpQuery::Reject, _) => refused(),
                    (NonIpQuery::Skip, Some(to)) => send_on(query, to).await,
                    _ => MessageAnswer::Drop,
                }
            }
        };
        let name = question.name().to_ascii();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self.lookup_ttl(&name, family).await {
            Ok((ips, ttl)) => {
                let records = ips
                    .into_iter()
                    .filter_map(|ip| {
                        let rdata = match ip {
                            IpAddr::V4(v4) if family == Family::V4 => RData::A(A(v4)),
                            IpAddr::V6(v6) if family == Family::V6 => RData::AAAA(AAAA(v6)),
                            _ => return None,
                        };
                        Some(Record::from_rdata(question.name().clone(), ttl, rdata))
                    })
                    .collect();
                reply(&request, ResponseCode::NoError, records)
            }
            // As Xray: the resolver's answer code goes back (NOERROR with no address,
            // NXDOMAIN, a server's SERVFAIL or REFUSED), and a failure that is no DNS answer
            // (every server timed out or was unreachable) gets no reply.
            Err(LookupError::NoAddress) => reply(&request, ResponseCode::NoError, Vec::new()),
            Err(LookupError::NoName) => reply(&request, ResponseCode::NXDomain, Vec::new()),
            Err(LookupError::Rcode(code)) => reply(&request, <ResponseCode as From<u16>>::from(code), Vec::new()),
            Err(LookupError::Failed(_)) => MessageAnswer::Drop,
        }
    }
}

/// A response to `request` with `code` and `answers`.
fn reply(request: &Message, code: ResponseCode, answers: Vec<Record>) -> MessageAnswer {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    for q in request.queries() {
        response.add_query(q.clone());
    }
    response.add_answers(answers);
    match response.to_vec() {
        Ok(bytes) => MessageAnswer::Reply(bytes),
        Err(_) => MessageAnswer::Drop,
    }
}

/// Sends `query` on to `to` (over TCP when the flag says so) and returns its answer.
async fn send_on(query: &[u8], (to, tcp): (SocketAddr, bool)) -> MessageAnswer {
    let exchange = async {
        if tcp {
            let mut stream = tokio::net::TcpStream::connect(to).await?;
            let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
            stream.write_all(&[&len.to_be_bytes()[..], query].concat()).await?;
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).await?;
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(head))];
            stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        } else {
            let local: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
            let socket = tokio::net::UdpSocket::bind(local).await?;
            socket.connect(to).await?;
            socket.send(query).await?;
            let mut body = vec![0u8; 64 * 1024];
            let n = socket.recv(&mut body).await?;
            body.truncate(n);
            Ok(body)
        }
    };
    match tokio::time::timeout(FORWARD_TIMEOUT, exchange).await {
        Ok(Ok(body)) => MessageAnswer::Reply(body),
        _ => MessageAnswer::Drop,
    }
}

// === impl NameServer ===

impl NameServer {
    /// Asks this server for one family of `name`.
    async fn query(&self, name: &str, v6: bool) -> Result<Found, LookupError> {
        if self.spec.address == DnsAddress::Localhost {
            let found = tokio::net::lookup_host((name, 0)).await.map_err(|e| LookupError::Failed(e.to_string()))?;
            let ips: Vec<IpAddr> = found.map(|a| a.ip()).filter(|ip| ip.is_ipv6() == v6).collect();
            return match ips.is_empty() {
                true => Err(LookupError::NoAddress),
                // Not cached: the system keeps its own.
                false => Ok((ips, 0)),
            };
        }
        let client = self.client.get_or_try_init(|| self.build()).await.map_err(LookupError::Failed)?;
        let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| LookupError::Failed(e.to_string()))?;
        let looked = match v6 {
            false => client.ipv4_lookup(fqdn).await.map(|l| {
                let until = l.as_lookup().valid_until();
                (l.iter().map(|a| IpAddr::V4(a.0)).collect::<Vec<_>>(), until)
            }),
            true => client.ipv6_lookup(fqdn).await.map(|l| {
                let until = l.as_lookup().valid_until();
                (l.iter().map(|a| IpAddr::V6(a.0)).collect::<Vec<_>>(), until)
            }),
        };
        match looked {
            Ok((ips, _)) if ips.is_empty() => Err(LookupError::NoAddress),
            Ok((ips, until)) => {
                let ttl = until.saturating_duration_since(Instant::now()).as_secs() as u32;
                Ok((ips, ttl))
            }
            Err(e) => match e.proto().map(|p| p.kind()) {
                Some(ProtoErrorKind::NoRecordsFound { response_code: ResponseCode::NoError, .. }) => {
                    Err(LookupError::NoAddress)
                }
                Some(ProtoErrorKind::NoRecordsFound { response_code: ResponseCode::NXDomain, .. }) => {
                    Err(LookupError::NoName)
                }
                // SERVFAIL, REFUSED and the like: the server's own answer.
                Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
                    Err(LookupError::Rcode(u16::from(*response_code)))
                }
                _ => Err(LookupError::Failed(e.to_string())),
            },
        }
    }

    /// The hickory resolver for this server (a name in its address is resolved now, by the system).
    async fn build(&self) -> Result<TokioResolver, String> {
        let (server, protocol, path) = match &self.spec.address {
            DnsAddress::Udp(d) => (d, Protocol::Udp, None),
            DnsAddress::Tcp(d) => (d, Protocol::Tcp, None),
            DnsAddress::Tls(d) => (d, Protocol::Tls, None),
            DnsAddress::Https { server, path } => (server, Protocol::Https, Some(path.clone())),
            DnsAddress::Localhost => return Err("the system resolver needs no client".into()),
        };
        let socket_addr = socket_addr(server).await.map_err(|e| format!("{}: {e}", self.label))?;
        let mut config = NameServerConfig::new(socket_addr, protocol);
        if matches!(protocol, Protocol::Tls | Protocol::Https) {
            config.tls_dns_name = Some(match &server.addr {
                Address::Ip(ip) => ip.to_string(),
                Address::Domain(d) => d.to_string(),
            });
        }
        config.http_endpoint = path;
        let mut opts = ResolverOpts::default();
        // Our cache and our fallback order: hickory asks once and keeps nothing.
        opts.cache_size = 0;
        opts.attempts = 1;
        opts.timeout = self.spec.timeout;
        opts.ndots = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        if matches!(protocol, Protocol::Tls | Protocol::Https) {
            opts.tls_config = tls_config().map_err(|e| format!("{}: {e}", self.label))?;
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![config]);
        Ok(TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).with_options(opts).build())
    }

    /// `ips` as `expectIPs` and `unexpectedIPs` leave them; `None` when nothing is left.
    fn expected(&self, ips: Vec<IpAddr>) -> Option<Vec<IpAddr>> {
        let inside = |nets: &[IpNet], ip: &IpAddr| nets.iter().any(|n| n.contains(ip));
        let ips: Vec<IpAddr> = ips.into_iter().filter(|ip| !inside(&self.spec.unexpected_ips, ip)).collect();
        if self.spec.expect_ips.is_empty() {
            return (!ips.is_empty()).then_some(ips);
        }
        let kept: Vec<IpAddr> = ips.iter().copied().filter(|ip| inside(&self.spec.expect_ips, ip)).collect();
        match (kept.is_empty(), self.spec.expect_ips_prefer) {
            (false, _) => Some(kept),
            (true, true) if !ips.is_empty() => Some(ips),
            _ => None,
        }
    }
}

/// A server's address with its name (if any) resolved by the system.
async fn socket_addr(server: &Destination) -> std::io::Result<SocketAddr> {
    match &server.addr {
        Address::Ip(ip) => Ok(SocketAddr::new(*ip, server.port)),
        Address::Domain(d) => tokio::net::lookup_host((d.as_ref(), server.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")),
    }
}

/// The TLS client of DoT and DoH: the web's roots, and the certificates in the PEM file
/// `SSL_CERT_FILE` names (OpenSSL's variable), for a resolver with a private CA.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        let shown = std::path::Path::new(&file).display().to_string();
        let pem = std::fs::read(&file).map_err(|e| format!("SSL_CERT_FILE {shown}: {e}"))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("SSL_CERT_FILE {shown}: {e}"))?;
            roots.add(cert).map_err(|e| format!("SSL_CERT_FILE {shown}: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// How a server is named in logs.
fn label(address: &DnsAddress) -> String {
    match address {
        DnsAddress::Udp(d) => format!("udp://{d}"),
        DnsAddress::Tcp(d) => format!("tcp://{d}"),
        DnsAddress::Tls(d) => format!("tls://{d}"),
        DnsAddress::Https { server, path } => format!("https://{server}{path}"),
        DnsAddress::Localhost => "localhost".into(),
    }
}

/// Answers the shards' questions until every shard's sender is gone.
pub fn spawn(
    resolver: Arc<DnsResolver>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<DnsRequest>,
    mailboxes: Vec<ShardMailbox>,
) {
    let mailboxes: Arc<[ShardMailbox]> = mailboxes.into();
    tokio::spawn(async move {
        while let Some(DnsRequest { shard, question, reply }) = requests.recv().await {
            let (resolver, mailboxes) = (resolver.clone(), mailboxes.clone());
            tokio::spawn(async move {
                let answer = match question {
                    DnsQuestion::Lookup { name, family } => {
                        let (found, keep_secs) = resolver.lookup_for_shard(&name, family).await;
                        DnsAnswer::Addresses { found, keep_secs }
                    }
                    DnsQuestion::Message { query, non_ip_query, block_types, forward } => {
                        DnsAnswer::Message(resolver.answer_message(&query, non_ip_query, &block_types, forward).await)
                    }
                };
                if let Some(mailbox) = mailboxes.get(shard) {
                    let _ = mailbox.send(ShardCommand::DnsAnswer { reply, answer });
                }
            });
        }
    });
}
