#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::trojan::Request;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let Ok(request) = Request::decode(&mut rest) else { return };
    let mut out = Vec::new();
    request.encode(&mut out);
    assert_eq!(out, data[..data.len() - rest.len()]);
});
