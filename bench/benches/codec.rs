//! VLESS request header decode, next to a copy of the same bytes as the baseline.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use shardray_wire::addr::{Address, Destination};
use shardray_wire::vless::{Command, RequestHeader};
use uuid::Uuid;

fn header_bytes(addr: Address) -> Vec<u8> {
    let header = RequestHeader {
        user: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        flow: String::new(),
        command: Command::Tcp,
        destination: Some(Destination { addr, port: 443 }),
    };
    let mut out = Vec::new();
    header.encode(&mut out);
    out
}

fn vless_decode(c: &mut Criterion) {
    let cases = [
        ("ipv4", header_bytes(Address::Ip(IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))))),
        ("domain", header_bytes(Address::Domain("www.example.com".into()))),
    ];
    let mut group = c.benchmark_group("vless_header");
    group.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for (name, bytes) in &cases {
        // Check the bytes decode, and decode completely, before timing them.
        let mut check = bytes.as_slice();
        RequestHeader::decode(&mut check).expect("encoded header decodes");
        assert!(check.is_empty(), "decode consumed the whole header");

        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                let mut buf = black_box(bytes.as_slice());
                black_box(RequestHeader::decode(&mut buf))
            })
        });
        // Baseline: copy the same bytes into a stack buffer.
        group.bench_function(format!("copy_baseline/{name}"), |b| {
            let mut dst = [0u8; 64];
            b.iter(|| {
                let src = black_box(bytes.as_slice());
                dst[..src.len()].copy_from_slice(src);
                black_box(&dst);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, vless_decode);
criterion_main!(benches);
