#![no_main]

//! Feeds any bytes to a REALITY TLS 1.3 client handshake as the server's reply, in two
//! pieces: refused or waiting for more, never a panic.

use libfuzzer_sys::fuzz_target;
use shardray_wire::tls13_client::{ClientHandshake, ClientSettings, Entropy, ServerAuth};

fuzz_target!(|data: &[u8]| {
    let alpn: [&[u8]; 2] = [b"h2", b"http/1.1"];
    let server = ServerAuth::Reality { public_key: [9; 32], short_id: [0; 8], version: [26, 3, 27], unix_time: 0 };
    let settings = ClientSettings { server_name: "www.example.com", alpn: &alpn, server };
    let entropy = Entropy { random: [1; 32], key_share: [2; 32], grease: [3, 4] };
    let Ok((mut client, _hello)) = ClientHandshake::start(&settings, &entropy) else { return };
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut input = data[..split].to_vec();
    let mut out = Vec::new();
    if client.advance(&mut input, &mut out).is_err() {
        return;
    }
    input.extend_from_slice(&data[split..]);
    let _ = client.advance(&mut input, &mut out);
});
