#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::socks::Credentials;

fuzz_target!(|data: &[u8]| {
    let _ = Credentials::decode(&mut &data[..]);
});
