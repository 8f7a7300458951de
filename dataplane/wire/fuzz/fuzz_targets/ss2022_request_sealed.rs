#![no_main]

//! A 2022 request (single- or multi-user) whose fixed header fields and variable header are fuzz
//! bytes, sealed under fixed keys, then mutated; a prefix must say `UnexpectedEnd` untouched or
//! fail, and an unmutated valid request must come back whole.

use libfuzzer_sys::fuzz_target;
use shardray_wire::shadowsocks::ss2022::Server;
use shardray_wire::shadowsocks::{Error, ReplayFilter};
use shardray_wire_fuzz::{drain_ss, mutate, seal_ss2022_request, split_long, ss_key, ss_method, ss_salt, NOW};

fuzz_target!(|data: &[u8]| {
    let Some((&[m, kind, dt, lm], data)) = data.split_first_chunk::<4>() else { return };
    let method = ss_method(m, false);
    let multi = m & 0x10 != 0 && method.supports_identity_headers();
    let (server_key, user_key) = (ss_key(method, 1), ss_key(method, 3));
    let (server, key) = match multi {
        true => (Server::with_users(method, server_key, vec![ss_key(method, 2), user_key]).unwrap(), user_key),
        false => (Server::new(method, server_key), server_key),
    };
    let (var, rest) = split_long(data);
    let (more, ops) = split_long(rest);
    let var_len = if lm & 1 == 0 { var.len() as u16 } else { u16::from(lm) << 3 };
    let timestamp = NOW.wrapping_add_signed(i64::from(dt as i8));
    let salt = ss_salt(method, m);
    let identity = multi.then_some(&server_key);
    let mut wire = seal_ss2022_request(method, identity, &key, &salt, kind >> 6, timestamp, var_len, var, more);
    mutate(&mut wire, ops);
    let cut = wire.len() * usize::from(lm >> 1) / 128;
    let mut short = wire[..cut].to_vec();
    if let Err(Error::UnexpectedEnd) = server.decode_request(&mut short, NOW, &mut ReplayFilter::new(4)) {
        assert_eq!(short, wire[..cut]);
    }
    if let Ok((request, mut opener)) = server.decode_request(&mut wire, NOW, &mut ReplayFilter::new(4)) {
        assert_eq!(request.user, multi.then_some(1));
        let mut got = wire[request.payload.clone()].to_vec();
        let (rest, how) = drain_ss(&mut opener, &mut wire[request.consumed..], usize::from(m >> 5) + 1);
        got.extend_from_slice(&rest);
        if ops.is_empty() {
            assert_eq!(got, [&var[var.len() - request.payload.len()..], more].concat());
            assert_eq!(how, Ok(()));
        }
    }
});
