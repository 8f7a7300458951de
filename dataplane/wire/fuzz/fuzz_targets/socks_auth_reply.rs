#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::socks::decode_auth_reply;

fuzz_target!(|data: &[u8]| {
    let _ = decode_auth_reply(&mut &data[..]);
});
