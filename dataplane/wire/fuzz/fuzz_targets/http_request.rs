#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::http::RequestHead;

fuzz_target!(|data: &[u8]| {
    let _ = RequestHead::parse(data, &mut Vec::new());
});
