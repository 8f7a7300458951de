#![no_main]

//! Fuzz-chosen pieces (split at `|`) sealed as body chunks under a framing taken from the first
//! bytes, then mutated and opened a few bytes at a time; unmutated, they must come back whole.

use libfuzzer_sys::fuzz_target;
use shardray_wire::vmess::{ChunkOpener, ChunkSealer, Direction, VmessError};
use shardray_wire_fuzz::{drain_vmess, mutate, split_long, vmess_header};

fuzz_target!(|data: &[u8]| {
    let Some((&[security, options, command, d], data)) = data.split_first_chunk::<4>() else { return };
    let header = vmess_header([security, options, command]);
    let direction = if d & 1 == 0 { Direction::Request } else { Direction::Response };
    let Ok(mut sealer) = ChunkSealer::new(&header, direction, [3; 32]) else { return };
    let (pieces, ops) = split_long(data);
    let (mut wire, mut sent) = (Vec::new(), Vec::new());
    for piece in pieces.split(|&b| b == b'|') {
        if sealer.seal(piece, &mut wire).is_ok() {
            sent.extend_from_slice(piece);
        }
    }
    let end = d & 2 != 0;
    if end {
        sealer.seal_end(&mut wire);
    }
    mutate(&mut wire, ops);
    let mut opener = ChunkOpener::new(&header, direction).unwrap();
    let (got, how) = drain_vmess(&mut opener, &mut wire, usize::from(d >> 2) + 1);
    if ops.is_empty() {
        assert_eq!(got, sent);
        let raw = header.options.0 & 1 == 0 && header.security == shardray_wire::vmess::Security::None;
        assert_eq!(how, if end && !raw { Ok(()) } else { Err(VmessError::UnexpectedEnd) });
    }
});
