#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::vmess::{find_user, AuthIdKey, ReplayFilter};
use shardray_wire_fuzz::NOW;

fuzz_target!(|data: &[u8]| {
    let Some(auth_id) = data.get(..16) else { return };
    let keys = [AuthIdKey::new(&[1; 16]), AuthIdKey::new(&[2; 16])];
    let _ = find_user(keys.iter().zip(0..), auth_id.try_into().unwrap(), NOW, &mut ReplayFilter::new());
});
