#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::shadowsocks::{ss2022::Server, ReplayFilter};
use shardray_wire_fuzz::{first, ss_key, ss_method, NOW};

fuzz_target!(|data: &[u8]| {
    let (m, data) = first(data);
    let method = ss_method(m % 2, false);
    let users = vec![ss_key(method, 2), ss_key(method, 3)];
    let server = Server::with_users(method, ss_key(method, 1), users).unwrap();
    let _ = server.decode_request(&mut data.to_vec(), NOW, &mut ReplayFilter::new(16));
});
