#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::trojan::UdpFrame;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let Ok(frame) = UdpFrame::decode(&mut rest) else { return };
    let mut out = Vec::new();
    frame.encode(&mut out).unwrap();
    assert_eq!(out, data[..data.len() - rest.len()]);
});
