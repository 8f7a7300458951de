#![no_main]

//! Fuzz-chosen pieces (split at `|`) sealed as chunks, optionally followed by a sealed length
//! of any value, then mutated and opened a few bytes at a time; unmutated, they come back whole.

use libfuzzer_sys::fuzz_target;
use shardray_wire::aead::AeadKey;
use shardray_wire::shadowsocks::{ChunkOpener, ChunkSealer, Error, Method};
use shardray_wire_fuzz::{mutate, seal_into, split_long, ss_nonce};

fuzz_target!(|data: &[u8]| {
    let Some((&[m, step, hi, lo], data)) = data.split_first_chunk::<4>() else { return };
    let method = Method::ALL[usize::from(m % 7)];
    let subkey = &[7; 32][..method.key_len()];
    let mut sealer = ChunkSealer::new(method, subkey);
    let (pieces, ops) = split_long(data);
    let (mut wire, mut sent, mut chunks) = (Vec::new(), Vec::new(), 0);
    for piece in pieces.split(|&b| b == b'|') {
        sealer.seal(piece, &mut wire);
        sent.extend_from_slice(piece);
        chunks += piece.len().div_ceil(sealer.max_payload());
    }
    let raw_len = m & 0x80 != 0;
    if raw_len {
        let key = AeadKey::new(method.cipher(), subkey);
        seal_into(&key, &ss_nonce(method, 2 * chunks as u64), &[], &[hi, lo], &mut wire);
    }
    mutate(&mut wire, ops);
    let mut opener = ChunkOpener::new(method, subkey);
    let (got, how) = shardray_wire_fuzz::drain_ss(&mut opener, &mut wire, usize::from(step) + 1);
    if ops.is_empty() {
        assert_eq!(got, sent);
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let expected = match raw_len {
            false => Ok(()),
            true if len > method.max_payload() => Err(Error::ChunkTooLong(len as u16)),
            true => Err(Error::UnexpectedEnd),
        };
        assert_eq!(how, expected);
    }
});
