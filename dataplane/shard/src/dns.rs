//! Asking the `dns` object's resolver, which runs on the control thread: a shard sends its
//! question over a channel and awaits the answer, which comes back through the shard's mailbox
//! (`ShardCommand::DnsAnswer`), so a shard never blocks on DNS and a slow server delays only
//! the sessions waiting for its answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shardray_core::spec::{DnsOutboundSpec, NonIpQuery};

/// How long a shard waits for the resolver at most (its servers have their own timeouts).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Which address families a lookup wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// A and AAAA.
    Any,
    /// A only.
    V4,
    /// AAAA only.
    V6,
}

/// What a shard asks.
#[derive(Debug)]
pub enum DnsQuestion {
    /// The addresses of a name.
    Lookup {
        /// The name, lowercase, without a trailing dot.
        name: Arc<str>,
        /// The families wanted.
        family: Family,
    },
    /// A DNS query message routed to a `dns` outbound.
    Message {
        /// The query as the client sent it (no TCP length prefix).
        query: Vec<u8>,
        /// `nonIPQuery`: what happens to a query other than A and AAAA.
        non_ip_query: NonIpQuery,
        /// `blockTypes`
        block_types: Vec<u16>,
        /// Where a query that is sent on goes, and whether over TCP; `None` when the safety
        /// rules refuse its destination (the query is dropped then).
        forward: Option<(SocketAddr, bool)>,
    },
}

/// Why a lookup found no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The servers answered, with no address of the wanted family (NOERROR, no answer).
    NoAddress,
    /// The servers answered that the name does not exist (NXDOMAIN).
    NoName,
    /// A server answered with this error code (SERVFAIL, REFUSED, …), and none did better.
    Rcode(u16),
    /// No server gave an answer; the reason.
    Failed(String),
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupError::NoAddress => f.write_str("name has no address of the wanted family"),
            LookupError::NoName => f.write_str("no such name (NXDOMAIN)"),
            LookupError::Rcode(code) => write!(f, "the server answered with error code {code}"),
            LookupError::Failed(why) => f.write_str(why),
        }
    }
}

/// What a `dns` outbound does with one query message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageAnswer {
    /// Send this response to the client.
    Reply(Vec<u8>),
    /// No answer at all.
    Drop,
}

/// The resolver's answer.
#[derive(Debug, Clone)]
pub enum DnsAnswer {
    /// To a `Lookup`.
    Addresses(Result<Vec<IpAddr>, LookupError>),
    /// To a `Message`.
    Message(MessageAnswer),
}

/// One question on its way to the resolver, with where its answer goes.
#[derive(Debug)]
pub struct DnsRequest {
    /// The shard that asks: the answer goes back through its mailbox.
    pub shard: usize,
    /// The question.
    pub question: DnsQuestion,
    /// Where the shard awaits the answer (`try_send` it from the shard's own thread).
    pub reply: async_channel::Sender<DnsAnswer>,
}

/// The resolver's intake: `Send`, one clone per shard.
pub type DnsRequests = tokio::sync::mpsc::UnboundedSender<DnsRequest>;

/// A shard's way to the resolver.
#[derive(Clone)]
pub(crate) struct DnsClient {
    shard: usize,
    requests: DnsRequests,
}

impl DnsClient {
    pub(crate) fn new(shard: usize, requests: DnsRequests) -> DnsClient {
        DnsClient { shard, requests }
    }

    /// Asks `question` and awaits the answer; `None` if the resolver is gone or too slow.
    pub(crate) async fn ask(&self, question: DnsQuestion) -> Option<DnsAnswer> {
        let (reply, answer) = async_channel::bounded(1);
        self.requests.send(DnsRequest { shard: self.shard, question, reply }).ok()?;
        let late = async {
            glommio::timer::sleep(ANSWER_TIMEOUT).await;
            None
        };
        futures_lite::future::or(async { answer.recv().await.ok() }, late).await
    }

    /// The addresses of `name`, of `family`.
    pub(crate) async fn lookup(&self, name: &str, family: Family) -> Result<Vec<IpAddr>, LookupError> {
        let name: Arc<str> = name.trim_end_matches('.').to_ascii_lowercase().into();
        match self.ask(DnsQuestion::Lookup { name, family }).await {
            Some(DnsAnswer::Addresses(found)) => found,
            _ => Err(LookupError::Failed("the resolver did not answer in time".into())),
        }
    }

    /// What to do with a query message routed to a `dns` outbound.
    pub(crate) async fn answer(
        &self,
        query: Vec<u8>,
        spec: &DnsOutboundSpec,
        forward: Option<(SocketAddr, bool)>,
    ) -> MessageAnswer {
        let question = DnsQuestion::Message {
            query,
            non_ip_query: spec.non_ip_query,
            block_types: spec.block_types.clone(),
            forward,
        };
        match self.ask(question).await {
            Some(DnsAnswer::Message(m)) => m,
            _ => MessageAnswer::Drop,
        }
    }
}
