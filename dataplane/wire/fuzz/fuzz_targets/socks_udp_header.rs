#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::socks::UdpHeader;

fuzz_target!(|data: &[u8]| {
    let Ok(destination) = UdpHeader::decode(&mut &data[..]) else { return };
    let mut out = Vec::new();
    UdpHeader::encode(&destination, &mut out);
    assert_eq!(UdpHeader::decode(&mut &out[..]), Ok(destination));
});
