#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::socks::Socks4Request;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = Socks4Request::decode(&mut &data[..]) else { return };
    // An IPv6 literal in a SOCKS4a name decodes, but SOCKS4 cannot carry it back.
    let mut out = Vec::new();
    if request.encode(&mut out).is_ok() {
        assert_eq!(Socks4Request::decode(&mut &out[..]), Ok(request));
    }
});
