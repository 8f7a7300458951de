#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::socks::Greeting;

fuzz_target!(|data: &[u8]| {
    let _ = Greeting::decode(&mut &data[..]);
});
