#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::trojan::Request;

fuzz_target!(|data: &[u8]| {
    let _ = Request::peek_key(data);
});
