#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::vmess::RequestOpener;
use shardray_wire_fuzz::vmess_user;

fuzz_target!(|data: &[u8]| {
    let _ = RequestOpener::new(&vmess_user()).open(&mut data.to_vec());
});
