//! Sans-IO codecs for the protocols shardray speaks: bytes in, typed headers out; no sockets, no clock.
#![deny(rust_2018_idioms)]
#![warn(missing_docs, unreachable_pub)]

pub mod addr;
pub mod aead;
pub mod chunked;
pub mod grpc;
pub mod http;
pub mod http_header;
pub mod proxy_protocol;
pub mod reality;
pub mod shadowsocks;
pub mod sniff;
pub mod socks;
pub mod tls13_client;
mod tls_fields;
pub mod trojan;
pub mod vision;
pub mod vless;
pub mod vmess;
pub mod websocket;
pub mod xhttp;
pub mod xudp;

/// Why a decoder rejected its input.
///
/// `UnexpectedEnd` is the only recoverable case: the caller should read more bytes and try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends before the header does.
    UnexpectedEnd,
    /// The protocol version byte is not one we speak.
    BadVersion(u8),
    /// The command byte is unknown or not supported.
    BadCommand(u8),
    /// The address type byte is unknown.
    BadAddressType(u8),
    /// A domain name is empty or not valid UTF-8.
    BadDomain,
    /// The addons (protobuf) section is malformed.
    BadAddons,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnexpectedEnd => f.write_str("header truncated"),
            DecodeError::BadVersion(v) => write!(f, "unknown version {v}"),
            DecodeError::BadCommand(c) => write!(f, "unsupported command {c}"),
            DecodeError::BadAddressType(t) => write!(f, "unknown address type {t}"),
            DecodeError::BadDomain => f.write_str("invalid domain name"),
            DecodeError::BadAddons => f.write_str("malformed addons"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Splits `n` bytes off the front of `buf`, or fails with `UnexpectedEnd` leaving `buf` unchanged.
pub(crate) fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if buf.len() < n {
        return Err(DecodeError::UnexpectedEnd);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Takes one byte off the front of `buf`.
pub(crate) fn take_u8(buf: &mut &[u8]) -> Result<u8, DecodeError> {
    Ok(take(buf, 1)?[0])
}

/// Takes a big-endian u16 off the front of `buf`.
pub(crate) fn take_u16(buf: &mut &[u8]) -> Result<u16, DecodeError> {
    let b = take(buf, 2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}
