#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::shadowsocks::ss2022::decode_response;
use shardray_wire_fuzz::{first, ss_key, ss_method, ss_salt, NOW};

fuzz_target!(|data: &[u8]| {
    let (m, data) = first(data);
    let method = ss_method(m, false);
    let _ = decode_response(method, &ss_key(method, 1), &ss_salt(method, 1), &mut data.to_vec(), NOW);
});
