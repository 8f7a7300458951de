//! Transports under the protocols: TLS (rustls, server and client) for now, over a TCP stream shaped for it.

pub mod tls;
pub(crate) mod tls_tcp;
