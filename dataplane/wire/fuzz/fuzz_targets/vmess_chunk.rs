#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::vmess::{ChunkOpener, Direction};
use shardray_wire_fuzz::{drain_vmess, vmess_header};

fuzz_target!(|data: &[u8]| {
    let Some((&[security, options, command, d], data)) = data.split_first_chunk::<4>() else { return };
    let direction = if d & 1 == 0 { Direction::Request } else { Direction::Response };
    let Ok(mut opener) = ChunkOpener::new(&vmess_header([security, options, command]), direction) else { return };
    let _ = drain_vmess(&mut opener, &mut data.to_vec(), usize::from(d >> 1) + 1);
});
