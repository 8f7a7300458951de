//! REALITY on a shard: the verdict on a connection's ClientHello (read by `client_hello`), and
//! for an authenticated client a rustls server config of its own (TLS 1.3, X25519, the
//! temporary certificate signed for this connection's auth key).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello as RustlsHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ServerConfig, SignatureAlgorithm, SignatureScheme};
use shardray_core::spec::RealityServerSpec;
use shardray_wire::reality::{self, Acceptance, Authenticated, ClientHello, TemporaryCert};

/// One REALITY inbound as a shard runs it: its settings, and the ed25519 key and certificate
/// template made once when the shard starts.
pub(crate) struct RealityRt {
    pub(crate) spec: Box<RealityServerSpec>,
    cert: TemporaryCert,
    key: Arc<dyn SigningKey>,
    provider: Arc<CryptoProvider>,
}

/// What to do with a connection.
pub(crate) enum Verdict {
    /// A REALITY client: serve TLS with this config.
    Serve(Arc<ServerConfig>, Authenticated),
    /// Anything else: relay it to the target, for this reason.
    Relay(String),
}

impl RealityRt {
    /// The shard's runtime form of `spec`: a fresh ed25519 key and its certificate template.
    pub(crate) fn new(spec: &RealityServerSpec) -> Result<RealityRt, String> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "ed25519 key generation failed")?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "ed25519 key unusable")?;
        let public: [u8; 32] =
            ring::signature::KeyPair::public_key(&pair).as_ref().try_into().map_err(|_| "ed25519 key")?;
        let mut provider = super::tls::provider();
        let inner = provider
            .key_provider
            .load_private_key(PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec()).into())
            .map_err(|e| format!("ed25519 key: {e}"))?;
        provider.kx_groups.retain(|g| g.name() == rustls::NamedGroup::X25519);
        provider.cipher_suites.retain(|s| s.tls13().is_some());
        Ok(RealityRt {
            spec: Box::new(spec.clone()),
            cert: TemporaryCert::new(public),
            key: Arc::new(Ed25519Always(inner)),
            provider: Arc::new(provider),
        })
    }

    /// The verdict on a gathered ClientHello message, at unix time `now_ms`.
    pub(crate) fn judge(&self, message: &[u8], now_ms: u64) -> Verdict {
        let hello = match ClientHello::parse(message) {
            Ok(h) => h,
            Err(e) => return Verdict::Relay(e.to_string()),
        };
        let spec = &self.spec;
        // As Xray: a hello without a name is looked up as "", which `serverNames` may list.
        let name = hello.server_name.unwrap_or("");
        let listed = spec.server_names.iter().any(|s| s == name);
        let accept = Acceptance {
            private_key: &spec.private_key,
            short_ids: &spec.short_ids,
            min_client_ver: spec.min_client_ver,
            max_client_ver: spec.max_client_ver,
            max_time_diff_ms: spec.max_time_diff_ms,
        };
        match reality::authenticate(&hello, listed, &accept, now_ms) {
            Ok(auth) => {
                // A second showing of a ClientHello is a prober replaying a client's: it must
                // meet the target, as any stranger does.
                let mut fingerprint = [0u8; 16];
                fingerprint.copy_from_slice(&hello.session_id[..16]);
                if !crate::replay::SharedReplay::reality().insert_arrival(&fingerprint, now_ms / 1000) {
                    return Verdict::Relay("replayed ClientHello".into());
                }
                match self.server_config(&auth) {
                    Ok(config) => Verdict::Serve(config, auth),
                    Err(e) => Verdict::Relay(format!("TLS config: {e}")),
                }
            }
            Err(e) => Verdict::Relay(format!("{e} (server name {name:?})")),
        }
    }

    /// TLS 1.3 only, X25519 only, the certificate signed for this auth key, no tickets (shoes
    /// fails on a real one, and Xray sends none), no session cache.
    fn server_config(&self, auth: &Authenticated) -> Result<Arc<ServerConfig>, rustls::Error> {
        let cert = CertificateDer::from(self.cert.for_auth_key(&auth.auth_key));
        let certified = Arc::new(CertifiedKey::new(vec![cert], self.key.clone()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OneCert(certified)));
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(Arc::new(config))
    }
}

/// The one certificate, whatever the ClientHello asks.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: RustlsHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Signs CertificateVerify with ed25519 whatever schemes the client offered: REALITY clients
/// check that signature against the certificate's key, and uTLS's Chrome hellos (and shoes's)
/// do not list ed25519.
#[derive(Debug)]
struct Ed25519Always(Arc<dyn SigningKey>);

impl SigningKey for Ed25519Always {
    fn choose_scheme(&self, _offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        self.0.choose_scheme(&[SignatureScheme::ED25519])
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}
