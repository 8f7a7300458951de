#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::sniff::UdpSniffer;

// The input split at its first byte's offset into two datagrams, pushed in turn.
fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let (a, b) = rest.split_at((cut as usize * 8).min(rest.len()));
    let mut sniffer = UdpSniffer::default();
    let _ = sniffer.push(a);
    let _ = sniffer.push(b);
});
