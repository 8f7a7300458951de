#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::shadowsocks::classic::decode_request;
use shardray_wire_fuzz::{first, ss_key, ss_method};

fuzz_target!(|data: &[u8]| {
    let (m, data) = first(data);
    let method = ss_method(m, true);
    let _ = decode_request(method, &ss_key(method, 1), &mut data.to_vec());
});
