#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::shadowsocks::{ChunkOpener, Method};
use shardray_wire_fuzz::{drain_ss, first};

fuzz_target!(|data: &[u8]| {
    let (m, data) = first(data);
    let method = Method::ALL[usize::from(m % 7)];
    let mut opener = ChunkOpener::new(method, &[7; 32][..method.key_len()]);
    let _ = drain_ss(&mut opener, &mut data.to_vec(), usize::from(m >> 3) + 1);
});
