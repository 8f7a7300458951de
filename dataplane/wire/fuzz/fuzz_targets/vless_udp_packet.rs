#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = shardray_wire::vless::decode_packet(&mut &data[..]);
});
