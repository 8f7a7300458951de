#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::vmess::ResponseHeader;
use shardray_wire_fuzz::vmess_header;

fuzz_target!(|data: &[u8]| {
    let _ = ResponseHeader::open(&mut data.to_vec(), &vmess_header([0; 3]));
});
