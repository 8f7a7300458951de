#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::socks::Request;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = Request::decode(&mut &data[..]) else { return };
    let mut out = Vec::new();
    request.encode(&mut out);
    assert_eq!(Request::decode(&mut &out[..]), Ok(request));
});
