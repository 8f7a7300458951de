#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::vision::Unpadder;

// Any input, split where its first byte says, into outputs its second byte sizes: decoding
// never panics and always makes progress.
fuzz_target!(|data: &[u8]| {
    let [split, room, rest @ ..] = data else { return };
    let (split, room) = (usize::from(*split).max(1), usize::from(*room).max(1));
    let mut u = Unpadder::new(*b"0123456789abcdef");
    let mut out = vec![0u8; room];
    for mut chunk in rest.chunks(split) {
        while !chunk.is_empty() {
            let (used, wrote) = u.decode(chunk, &mut out);
            assert!(used > 0 || wrote > 0);
            chunk = &chunk[used..];
        }
    }
});
