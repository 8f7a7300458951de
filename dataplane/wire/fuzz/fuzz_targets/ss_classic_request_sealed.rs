#![no_main]

//! A classic request stream whose first chunk (address and payload) and second chunk are fuzz
//! bytes, sealed under a fixed key, then mutated; `find_user` must name the key and the whole
//! stream must come back when nothing was mutated.

use libfuzzer_sys::fuzz_target;
use shardray_wire::shadowsocks::classic::{decode_request, find_user, start_stream};
use shardray_wire_fuzz::{drain_ss, first, mutate, split_long, ss_key, ss_method, ss_salt};

fuzz_target!(|data: &[u8]| {
    let (m, data) = first(data);
    let method = ss_method(m, true);
    let key = ss_key(method, 1);
    let (head, rest) = split_long(data);
    let (more, ops) = split_long(rest);
    let mut wire = Vec::new();
    let mut sealer = start_stream(method, &key, &ss_salt(method, 1), &mut wire);
    sealer.seal(head, &mut wire);
    sealer.seal(more, &mut wire);
    mutate(&mut wire, ops);
    let user = find_user(method, &[ss_key(method, 2), key], &wire);
    if ops.is_empty() && !(head.is_empty() && more.is_empty()) {
        assert_eq!(user, Ok(1));
    }
    if let Ok((request, mut opener)) = decode_request(method, &key, &mut wire) {
        let mut got = wire[request.payload.clone()].to_vec();
        let (rest, how) = drain_ss(&mut opener, &mut wire[request.consumed..], usize::from(m >> 2) + 1);
        got.extend_from_slice(&rest);
        if ops.is_empty() {
            let header =
                request.payload.start - method.salt_len() - shardray_wire::shadowsocks::chunk::LENGTH_CHUNK_LEN;
            assert_eq!(got, [head, more].concat()[header..]);
            assert_eq!(how, Ok(()));
        }
    }
});
