//! Transports under the protocols: TLS (rustls, server and client) over a TCP stream shaped
//! for it, and the HTTP camouflage of raw TCP.

pub(crate) mod http_header;
pub mod tls;
pub(crate) mod tls_tcp;
