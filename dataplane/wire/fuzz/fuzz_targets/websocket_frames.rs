#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::websocket::{accept, Deframer, Endpoint, Flavor};

fuzz_target!(|data: &[u8]| {
    // The upgrade head, both flavors, with every option on.
    let trusted = ["X-Cdn".to_owned()];
    let endpoint = Endpoint { path: "/ws", host: "", early_data: 2048, trusted: &trusted };
    let _ = accept(Flavor::WebSocket, &endpoint, data);
    let _ = accept(Flavor::HttpUpgrade, &endpoint, data);
    // Frames, whole and split in two, on both sides: the same payload either way.
    for masked in [true, false] {
        let mut whole = data.to_vec();
        let Ok(n) = Deframer::new(masked).unframe(&mut whole) else { continue };
        let split = data.len() / 2;
        let mut d = Deframer::new(masked);
        let (mut a, mut b) = (data[..split].to_vec(), data[split..].to_vec());
        let na = d.unframe(&mut a).expect("a prefix of a good stream is good");
        let nb = d.unframe(&mut b).expect("so is the rest");
        assert_eq!([&a[..na], &b[..nb]].concat(), whole[..n]);
    }
});
