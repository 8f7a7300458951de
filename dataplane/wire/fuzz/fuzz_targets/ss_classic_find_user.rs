#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::shadowsocks::classic::find_user;
use shardray_wire_fuzz::{first, ss_key, ss_method};

fuzz_target!(|data: &[u8]| {
    let (m, data) = first(data);
    let method = ss_method(m, true);
    let _ = find_user(method, &[ss_key(method, 1), ss_key(method, 2)], data);
});
