//! QUIC client Initial datagrams around a real ClientHello, for the sniffing tests: rustls
//! writes the ClientHello (QUIC v1, ALPN h3), and it is carried in CRYPTO frames split over
//! Initial packets, one per datagram, each protected with the Initial keys rustls derives and
//! padded to 1200 bytes, as a browser sends them.

use std::sync::Arc;

use rustls::quic::{ClientConnection, Version};
use rustls::Side;

/// The destination connection id the Initials carry (RFC 9001's example).
const DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

/// Bytes of every datagram, as RFC 9000 asks of a client's Initial datagrams.
const DATAGRAM: usize = 1200;

/// A ClientHello naming `server_name`, with `extra` bytes of transport parameters (a large
/// value makes the hello as big as a post-quantum one), split over `parts` Initial datagrams.
pub fn client_initials(server_name: &str, extra: usize, parts: usize) -> Vec<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h3".to_vec()];
    // One reserved (greasing) transport parameter, id 27, holding `extra` zero bytes.
    let mut params = vec![27];
    varint(extra as u64, &mut params);
    params.resize(params.len() + extra, 0);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let mut conn = ClientConnection::new(Arc::new(config), Version::V1, name, params).unwrap();
    let mut hello = Vec::new();
    conn.write_hs(&mut hello);
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13().unwrap().quic_suite().unwrap();
    let keys = suite.keys(&DCID, Side::Client, Version::V1);
    let chunk = hello.len().div_ceil(parts);
    hello
        .chunks(chunk)
        .enumerate()
        .map(|(pn, data)| {
            // Header: long, Initial, 4-byte packet number; version 1; DCID; no SCID; no token;
            // the length as a 2-byte varint, then the packet number.
            let mut header = vec![0xc3, 0, 0, 0, 1, DCID.len() as u8];
            header.extend_from_slice(&DCID);
            header.extend_from_slice(&[0, 0]);
            let length_at = header.len();
            header.extend_from_slice(&[0, 0]);
            let pn_at = header.len();
            header.extend_from_slice(&(pn as u32).to_be_bytes());
            let mut payload = vec![0x06];
            varint((pn * chunk) as u64, &mut payload);
            varint(data.len() as u64, &mut payload);
            payload.extend_from_slice(data);
            // PADDING frames up to the datagram's size, less the AEAD tag.
            payload.resize(DATAGRAM - header.len() - 16, 0);
            let length = (4 + payload.len() + 16) as u16 | 0x4000;
            header[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());
            let tag = keys.local.packet.encrypt_in_place(pn as u64, &header, &mut payload).unwrap();
            payload.extend_from_slice(tag.as_ref());
            // The sample starts 4 bytes past the packet number's start: the payload's first 16.
            let sample = payload[..16].to_vec();
            let (first, rest) = header.split_at_mut(1);
            keys.local.header.encrypt_in_place(&sample, &mut first[0], &mut rest[pn_at - 1..pn_at + 3]).unwrap();
            header.extend_from_slice(&payload);
            header
        })
        .collect()
}

fn varint(v: u64, out: &mut Vec<u8>) {
    match v {
        0..=63 => out.push(v as u8),
        64..=16383 => out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes()),
        _ => out.extend_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes()),
    }
}
