#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_wire::grpc::GunDecoder;

fuzz_target!(|data: &[u8]| {
    // Whole, then split in two: the same payload, or the same error, either way.
    let decode = |chunks: &[&[u8]]| {
        let mut dec = GunDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            let mut input = *chunk;
            while let Some(piece) = dec.decode(&mut input)? {
                out.extend_from_slice(piece);
            }
        }
        Ok::<_, shardray_wire::grpc::GunError>(out)
    };
    let split = data.len() / 2;
    assert_eq!(decode(&[data]), decode(&[&data[..split], &data[split..]]));
});
