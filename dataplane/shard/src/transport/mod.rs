//! Transports under the protocols: TLS (rustls, server and client) over a TCP stream shaped
//! for it, REALITY (its ClientHello check before that TLS, and
//! its own TLS 1.3 client for outbounds), the ClientHello both read first,
//! the HTTP camouflage of raw TCP, and the HTTP transports (WebSocket, HTTPUpgrade), gRPC and
//! XHTTP.

pub(crate) mod client_hello;
pub(crate) mod grpc;
pub(crate) mod http_header;
pub(crate) mod reality;
pub(crate) mod reality_client;
pub mod tls;
pub(crate) mod tls_tcp;
pub(crate) mod vision;
pub(crate) mod ws;
pub(crate) mod xhttp;
pub(crate) mod xhttp_client;
