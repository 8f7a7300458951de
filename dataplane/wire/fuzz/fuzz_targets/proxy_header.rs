#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::proxy_protocol::{decode, encode};

// The PROXY protocol header an `acceptProxyProtocol` inbound reads from anyone who connects:
// its length never passes the input, and the addresses it names survive our own encoding.
fuzz_target!(|data: &[u8]| {
    let Ok((header, len)) = decode(data) else { return };
    assert!(len <= data.len());
    if let Some((client, server)) = header.addresses {
        if client.is_ipv4() == server.is_ipv4() {
            let mut out = Vec::new();
            encode(2, client, server, &mut out);
            assert_eq!(decode(&out).map(|(h, n)| (h.addresses, n)), Ok((Some((client, server)), out.len())));
        }
    }
});
