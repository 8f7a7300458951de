#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::socks::Socks4Request;

fuzz_target!(|data: &[u8]| {
    let _ = Socks4Request::decode(&mut &data[..]);
});
