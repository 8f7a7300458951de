#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::sniff::sniff_tcp;

// A TCP session's first payload as sniffing reads it (HTTP/1, TLS ClientHello, BitTorrent).
fuzz_target!(|data: &[u8]| {
    let _ = sniff_tcp(data);
});
