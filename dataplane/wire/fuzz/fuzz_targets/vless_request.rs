#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::vless::RequestHeader;

fuzz_target!(|data: &[u8]| {
    let _ = RequestHeader::decode(&mut &data[..]);
});
