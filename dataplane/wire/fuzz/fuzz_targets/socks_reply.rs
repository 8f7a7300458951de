#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::socks::decode_reply;

fuzz_target!(|data: &[u8]| {
    let _ = decode_reply(&mut &data[..]);
});
