#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::socks::decode_method_reply;

fuzz_target!(|data: &[u8]| {
    let _ = decode_method_reply(&mut &data[..]);
});
