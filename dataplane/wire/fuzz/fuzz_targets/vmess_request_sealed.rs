#![no_main]

//! A request sealed for the fixed user around a fuzz-chosen header plaintext (checksum
//! appended), then mutated; a first call on a prefix must resume to what a fresh opener says.

use libfuzzer_sys::fuzz_target;
use shardray_wire::vmess::{RequestOpener, VmessError};
use shardray_wire_fuzz::{first, mutate, seal_vmess_request, split_long, vmess_user, NOW};

fuzz_target!(|data: &[u8]| {
    let (cut, data) = first(data);
    let (plain, ops) = split_long(data);
    let mut wire = seal_vmess_request(&vmess_user(), NOW, plain);
    mutate(&mut wire, ops);
    let mut opener = RequestOpener::new(&vmess_user());
    let cut = wire.len() * usize::from(cut) / 256;
    let mut short = wire[..cut].to_vec();
    if opener.open(&mut short) == Err(VmessError::UnexpectedEnd) {
        assert_eq!(short, wire[..cut]);
        let fresh = RequestOpener::new(&vmess_user()).open(&mut wire.clone());
        assert_eq!(opener.open(&mut wire), fresh);
    }
});
