//! The Shadowsocks outbound (TCP, classic AEAD or 2022): dials the server like the Trojan
//! outbound, then speaks through an `SsStream`: the request (salt, address, headers) leaves
//! with the first payload, the response salt or header is opened before the body.

use shardray_core::spec::ShadowsocksOutboundSpec;
use shardray_wire::addr::Destination;
use shardray_wire::shadowsocks::{MasterKey, Method};

use super::trojan::{ClientTls, Upstream};
use crate::shadowsocks::SsStream;

/// A Shadowsocks outbound as a shard runs it: its keys, derived once.
pub(crate) struct SsClient {
    method: Method,
    /// 2022 multi-user: the server's identity PSK (`serverPSK:userPSK`).
    identities: Vec<MasterKey>,
    key: MasterKey,
    /// No TLS: Shadowsocks runs over plain TCP.
    pub(crate) tls: ClientTls,
}

impl SsClient {
    /// Builds the client; fails only on settings control has already checked.
    pub(crate) fn new(spec: &ShadowsocksOutboundSpec) -> Result<SsClient, String> {
        let (identities, key) = if spec.method.is_2022() {
            MasterKey::parse_psk_chain(spec.method, &spec.password).map_err(|e| format!("password: {e}"))?
        } else {
            (Vec::new(), MasterKey::from_password(spec.method, &spec.password).map_err(|e| format!("password: {e}"))?)
        };
        Ok(SsClient { method: spec.method, identities, key, tls: None })
    }

    /// The method, the user's key and (2022 multi-user) the server's identity PSK, for UDP;
    /// `None` for a relay chain of more than one identity, which UDP does not carry.
    pub(crate) fn udp_keys(&self) -> Option<(Method, MasterKey, Option<MasterKey>)> {
        match self.identities.as_slice() {
            [] => Some((self.method, self.key, None)),
            [one] => Some((self.method, self.key, Some(*one))),
            _ => None,
        }
    }

    /// Starts a Shadowsocks TCP request to `dest` over `server`, the dialed stream.
    pub(crate) fn start(&self, server: Upstream, dest: &Destination) -> Upstream {
        let stream = SsStream::client(server, self.method, self.identities.clone(), self.key, dest.clone());
        Upstream::Shadowsocks(Box::new(stream))
    }
}
