#![no_main]

//! A response header sealed for a fixed request around a fuzz-chosen plaintext and length, then
//! mutated.

use libfuzzer_sys::fuzz_target;
use shardray_wire::vmess::ResponseHeader;
use shardray_wire_fuzz::{first, mutate, seal_vmess_response, split, vmess_header};

fuzz_target!(|data: &[u8]| {
    let (m, data) = first(data);
    let (plain, ops) = split(data);
    let request = vmess_header([m, 0, 0]);
    let len = if m & 1 == 0 { plain.len() as u16 } else { u16::from(m) << 1 };
    let mut wire = seal_vmess_response(&request, len, plain);
    mutate(&mut wire, ops);
    if let Ok((_, n)) = ResponseHeader::open(&mut wire, &request) {
        assert!(n <= wire.len());
    }
});
