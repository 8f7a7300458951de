//! Transports under the protocols: TLS (rustls, server and client) over a TCP stream shaped
//! for it, the HTTP camouflage of raw TCP, and the HTTP transports (WebSocket, HTTPUpgrade).

pub(crate) mod http_header;
pub mod tls;
pub(crate) mod tls_tcp;
pub(crate) mod vision;
pub(crate) mod ws;
