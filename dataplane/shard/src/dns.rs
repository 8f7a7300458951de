//! Asking the `dns` object's resolver, which runs on the control thread: a shard sends its
//! question over a channel and awaits the answer, which comes back through the shard's mailbox
//! (`ShardCommand::DnsAnswer`), so a shard never blocks on DNS and a slow server delays only
//! the sessions waiting for its answer. Each shard keeps the addresses it was given for as long
//! as their TTL allows, so connections to one name cost one trip to the control thread per
//! TTL, not one each.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    Addresses {
        /// The addresses, or why there are none.
        found: Result<Vec<IpAddr>, LookupError>,
        /// How many seconds the shard may reuse the addresses (what is left of their TTL);
        /// 0: not at all (`disableCache`, or no addresses).
        keep_secs: u32,
    },
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

/// Names a shard keeps answers for at most; past it, expired answers go, then all.
const KEPT_NAMES: usize = 4096;

/// A name's kept answers, one per `Family` (see `Family::slot`): addresses and until when.
type KeptAnswers = [Option<(Vec<IpAddr>, Instant)>; 3];

impl Family {
    fn slot(self) -> usize {
        match self {
            Family::Any => 0,
            Family::V4 => 1,
            Family::V6 => 2,
        }
    }
}

/// A shard's way to the resolver, with the answers it may still reuse (shard-bound: the
/// clones a shard makes share them).
#[derive(Clone)]
pub(crate) struct DnsClient {
    shard: usize,
    requests: DnsRequests,
    kept: Rc<RefCell<HashMap<Box<str>, KeptAnswers>>>,
}

impl DnsClient {
    pub(crate) fn new(shard: usize, requests: DnsRequests) -> DnsClient {
        DnsClient { shard, requests, kept: Rc::default() }
    }

    /// The kept addresses of `name` for `family`, while their TTL lasts.
    fn kept(&self, name: &str, family: Family) -> Option<Vec<IpAddr>> {
        let kept = self.kept.borrow();
        let (ips, until) = kept.get(name)?[family.slot()].as_ref()?;
        (*until > Instant::now()).then(|| ips.clone())
    }

    fn keep(&self, name: &str, family: Family, ips: &[IpAddr], secs: u32) {
        let now = Instant::now();
        let mut kept = self.kept.borrow_mut();
        if kept.len() >= KEPT_NAMES && !kept.contains_key(name) {
            kept.retain(|_, answers| answers.iter().flatten().any(|(_, until)| *until > now));
            if kept.len() >= KEPT_NAMES {
                kept.clear();
            }
        }
        let answers = kept.entry(name.into()).or_default();
        answers[family.slot()] = Some((ips.to_vec(), now + Duration::from_secs(u64::from(secs))));
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

    /// The addresses of `name`, of `family`: kept ones while their TTL lasts, else the
    /// resolver's (failures are not kept).
    pub(crate) async fn lookup(&self, name: &str, family: Family) -> Result<Vec<IpAddr>, LookupError> {
        let name = name.trim_end_matches('.');
        let name = match name.bytes().any(|b| b.is_ascii_uppercase()) {
            true => Cow::Owned(name.to_ascii_lowercase()),
            false => Cow::Borrowed(name),
        };
        if let Some(ips) = self.kept(&name, family) {
            return Ok(ips);
        }
        match self.ask(DnsQuestion::Lookup { name: name.as_ref().into(), family }).await {
            Some(DnsAnswer::Addresses { found, keep_secs }) => {
                if let Ok(ips) = &found {
                    if keep_secs > 0 && !ips.is_empty() {
                        self.keep(&name, family, ips, keep_secs);
                    }
                }
                found
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A resolver stand-in, a task on the same shard (the real one answers through the shard's
    /// mailbox, so the reply is sent on the shard's thread either way): answers every lookup
    /// with 192.0.2.1, kept for `keep_secs` (names starting with `bad` fail), and counts the
    /// questions.
    fn resolver(keep_secs: u32) -> (DnsClient, Rc<Cell<usize>>) {
        let (requests, mut intake) = tokio::sync::mpsc::unbounded_channel::<DnsRequest>();
        let asked = Rc::new(Cell::new(0));
        let count = asked.clone();
        glommio::spawn_local(async move {
            while let Some(DnsRequest { question, reply, .. }) = intake.recv().await {
                count.set(count.get() + 1);
                let DnsQuestion::Lookup { name, .. } = question else { continue };
                let found = match name.starts_with("bad") {
                    true => Err(LookupError::NoName),
                    false => Ok(vec!["192.0.2.1".parse().unwrap()]),
                };
                let _ = reply.try_send(DnsAnswer::Addresses { found, keep_secs });
            }
        })
        .detach();
        (DnsClient::new(0, requests), asked)
    }

    fn on_a_shard(test: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static) {
        glommio::LocalExecutorBuilder::default().spawn(test).unwrap().join().unwrap();
    }

    #[test]
    fn answers_are_kept_per_name_and_family_for_their_ttl() {
        on_a_shard(|| {
            Box::pin(async {
                let (dns, asked) = resolver(1);
                let ip: IpAddr = "192.0.2.1".parse().unwrap();
                for name in ["svc.test", "SVC.test.", "svc.test"] {
                    assert_eq!(dns.lookup(name, Family::V4).await.unwrap(), [ip]);
                }
                // One question for the three: the name's case and trailing dot do not matter.
                assert_eq!(asked.get(), 1);
                // Another family or name is asked; a clone shares what was kept.
                dns.clone().lookup("svc.test", Family::Any).await.unwrap();
                dns.clone().lookup("svc.test", Family::V4).await.unwrap();
                assert_eq!(asked.get(), 2);
                // Failures are not kept.
                for _ in 0..2 {
                    assert_eq!(dns.lookup("bad.test", Family::V4).await, Err(LookupError::NoName));
                }
                assert_eq!(asked.get(), 4);
                // Past the TTL the name is asked again.
                glommio::timer::sleep(Duration::from_millis(1100)).await;
                dns.lookup("svc.test", Family::V4).await.unwrap();
                assert_eq!(asked.get(), 5);
            })
        });
    }

    #[test]
    fn an_answer_not_to_be_kept_is_asked_every_time() {
        on_a_shard(|| {
            Box::pin(async {
                let (dns, asked) = resolver(0);
                for _ in 0..3 {
                    dns.lookup("svc.test", Family::V4).await.unwrap();
                }
                assert_eq!(asked.get(), 3);
            })
        });
    }
}
