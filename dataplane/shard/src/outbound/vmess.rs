//! The VMess outbound (AEAD, TCP): dials the server (TLS and a transport if configured)
//! like the Trojan outbound, then speaks through a `VmessStream`: the sealed request header leaves with the
//! first chunk (or on its own when the server is to speak first), the response header is
//! opened before the body.

use std::io;

use shardray_core::spec::VmessOutboundSpec;
use shardray_wire::addr::Destination;
use shardray_wire::vmess::{
    has_aes_gcm_hardware, Command, Options, RequestHeader, SealRandom, Security, UserKey, VmessError,
};

use super::trojan::{client_tls, client_transport, ClientTls, ClientTransport, Upstream};
use crate::vmess::VmessStream;

/// A VMess outbound as a shard runs it: the user's keys, derived once, the body security
/// resolved, and the TLS client.
pub(crate) struct VmessClient {
    key: UserKey,
    security: Security,
    options: Options,
    pub(crate) tls: ClientTls,
    pub(crate) transport: ClientTransport,
}

impl VmessClient {
    /// Builds the client; fails only on settings control has already checked.
    pub(crate) fn new(spec: &VmessOutboundSpec) -> Result<VmessClient, String> {
        let (security, options) = spec.security.0.resolve(has_aes_gcm_hardware(), spec.authenticated_length);
        Ok(VmessClient {
            key: UserKey::new(&spec.id),
            security,
            options,
            tls: client_tls(spec.tls.as_ref(), &spec.server)?,
            transport: client_transport(&spec.transport, spec.tls.as_ref(), spec.reality.as_deref(), &spec.server)?,
        })
    }

    /// Starts a VMess TCP request to `dest` over `server`, the dialed stream.
    pub(crate) fn start(&self, server: Upstream, dest: &Destination, command: Command) -> io::Result<Upstream> {
        let mut random = [0u8; 16 + 16 + 1 + 4 + 8 + 1 + 15 + 32];
        fill_random(&mut random);
        let take = |at: usize, n: usize| &random[at..at + n];
        let request = RequestHeader {
            body_iv: take(0, 16).try_into().expect("16 bytes"),
            body_key: take(16, 16).try_into().expect("16 bytes"),
            response_auth: random[32],
            options: self.options,
            security: self.security,
            command,
            destination: Some(dest.clone()),
        };
        let seal = SealRandom {
            auth_id: take(33, 4).try_into().expect("4 bytes"),
            nonce: take(37, 8).try_into().expect("8 bytes"),
            padding_len: random[45] % 16,
            padding: take(46, 15).try_into().expect("15 bytes"),
        };
        let seed: [u8; 32] = take(61, 32).try_into().expect("32 bytes");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut sealed = Vec::with_capacity(128);
        request.seal(&self.key, now, &seal, &mut sealed);
        let stream = VmessStream::client(server, &request, &sealed, seed)
            .map_err(|e: VmessError| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Upstream::Vmess(Box::new(stream)))
    }
}

fn fill_random(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    // The system generator does not fail on Linux once booted.
    let _ = ring::rand::SystemRandom::new().fill(out);
}
