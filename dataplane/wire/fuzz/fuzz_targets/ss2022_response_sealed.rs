#![no_main]

//! A 2022 response whose header fields and first payload are fuzz bytes, sealed under a fixed
//! key, then mutated; an unmutated valid response must come back whole.

use libfuzzer_sys::fuzz_target;
use shardray_wire::shadowsocks::ss2022::decode_response;
use shardray_wire_fuzz::{drain_ss, mutate, seal_ss2022_response, split_long, ss_key, ss_method, ss_salt, NOW};

fuzz_target!(|data: &[u8]| {
    let Some((&[m, kind, dt, flags], data)) = data.split_first_chunk::<4>() else { return };
    let method = ss_method(m, false);
    let key = ss_key(method, 1);
    let request_salt = ss_salt(method, 1);
    let named_salt = if flags & 1 == 0 { request_salt.clone() } else { ss_salt(method, 2) };
    let (first, rest) = split_long(data);
    let (more, ops) = split_long(rest);
    let len = if flags & 2 == 0 { first.len() as u16 } else { u16::from(flags) << 4 };
    let timestamp = NOW.wrapping_add_signed(i64::from(dt as i8));
    let salt = ss_salt(method, 3);
    let mut wire = seal_ss2022_response(method, &key, &salt, kind >> 6, timestamp, &named_salt, len, first, more);
    mutate(&mut wire, ops);
    if let Ok((mut opener, n)) = decode_response(method, &key, &request_salt, &mut wire, NOW) {
        let (got, how) = drain_ss(&mut opener, &mut wire[n..], usize::from(m >> 2) + 1);
        if ops.is_empty() && flags & 2 == 0 {
            assert_eq!(got, [first, more].concat());
            assert_eq!(how, Ok(()));
        }
    }
});
