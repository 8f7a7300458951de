//! Transports under the inbound protocols: TLS (rustls) for now, over a TCP stream shaped for it.

pub mod tls;
pub(crate) mod tls_tcp;
