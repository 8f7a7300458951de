#![no_main]

//! Gathers and parses a REALITY ClientHello from a stream's first bytes, then authenticates it
//! with a fixed key: any input is refused or accepted, never a panic.

use libfuzzer_sys::fuzz_target;
use shardray_wire::reality::{authenticate, gather, Acceptance, ClientHello};

fuzz_target!(|data: &[u8]| {
    let mut message = Vec::new();
    if gather(data, &mut message).is_err() {
        return;
    }
    let Ok(hello) = ClientHello::parse(&message) else { return };
    let accept = Acceptance {
        private_key: &[7; 32],
        short_ids: &[[0; 8]],
        min_client_ver: None,
        max_client_ver: None,
        max_time_diff_ms: 60_000,
    };
    let _ = authenticate(&hello, true, &accept, 1_767_225_600_000);
});
