#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::shadowsocks::{ss2022::Server, ReplayFilter};
use shardray_wire_fuzz::{first, ss_key, ss_method, NOW};

fuzz_target!(|data: &[u8]| {
    let (m, data) = first(data);
    let method = ss_method(m, false);
    let server = Server::new(method, ss_key(method, 1));
    let _ = server.decode_request(&mut data.to_vec(), NOW, &mut ReplayFilter::new(16));
});
