#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::xudp::Frame;

fuzz_target!(|data: &[u8]| {
    let _ = Frame::data_len(data);
    let _ = Frame::decode(&mut &data[..]);
});
