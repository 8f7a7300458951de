#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::vless::RequestHeader;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = RequestHeader::decode(&mut &data[..]) else { return };
    // Our encoder writes flows of up to 127 bytes; what it writes must decode to the same header.
    if header.flow.len() <= 127 {
        let mut out = Vec::new();
        header.encode(&mut out);
        assert_eq!(RequestHeader::decode(&mut &out[..]), Ok(header));
    }
});
