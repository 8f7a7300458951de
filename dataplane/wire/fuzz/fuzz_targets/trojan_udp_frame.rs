#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::trojan::UdpFrame;

fuzz_target!(|data: &[u8]| {
    let _ = UdpFrame::decode(&mut &data[..]);
});
