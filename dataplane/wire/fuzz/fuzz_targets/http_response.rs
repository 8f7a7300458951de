#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::http::ResponseHead;

fuzz_target!(|data: &[u8]| {
    let _ = ResponseHead::parse(data);
});
