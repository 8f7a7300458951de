#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::socks::UdpHeader;

fuzz_target!(|data: &[u8]| {
    let _ = UdpHeader::decode(&mut &data[..]);
});
