//! Transports under the inbound protocols: TLS (rustls) for now.

pub mod tls;
