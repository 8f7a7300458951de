//! The chunk paths the `chunks` bench times allocate nothing per chunk once the output `Vec`
//! has capacity: `AeadKey` seal and open, the Shadowsocks chunk sealer and opener for every
//! method, and the VMess body sealer and opener for every security and option set. The header
//! decodes the `codec` and `handshake` benches time make the few per-connection allocations
//! listed in `header_decodes_allocate_only_what_they_return`. A counting global allocator (per
//! thread, so parallel tests do not mix) checks both.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use std::net::{IpAddr, Ipv4Addr};

use shardray_wire::addr::{Address, Destination};
use shardray_wire::aead::{AeadKey, Cipher, TAG_LEN};
use shardray_wire::shadowsocks::{self, classic, ss2022, MasterKey, Method};
use shardray_wire::vmess::{self, Command, Direction, Options, RequestHeader, Security};
use shardray_wire::{http, socks, trojan, vless};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System` unchanged; the counter is a plain thread-local
// `Cell` with a const initializer, which neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many allocations (and reallocations) `f` made on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

const PAYLOAD: usize = 16 * 1024;
const CHUNKS: usize = 8;

fn payload() -> Vec<u8> {
    (0..PAYLOAD).map(|i| i as u8).collect()
}

#[test]
fn counting_allocator_counts() {
    let (n, v) = allocations(|| Vec::<u8>::with_capacity(10));
    assert_eq!(n, 1);
    drop(v);
}

#[test]
fn aead_seal_and_open_do_not_allocate() {
    for cipher in [Cipher::Aes128Gcm, Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305, Cipher::XChaCha20Poly1305] {
        let key = AeadKey::new(cipher, &vec![7; cipher.key_len()]);
        let nonce = vec![1u8; cipher.nonce_len()];
        let mut buf = payload();
        buf.resize(PAYLOAD + TAG_LEN, 0);
        let (n, ()) = allocations(|| key.seal(&nonce, b"aad", &mut buf));
        assert_eq!(n, 0, "{cipher:?} seal");
        let (n, plain) = allocations(|| key.open(&nonce, b"aad", &mut buf).map(|p| p.len()));
        assert_eq!((n, plain), (0, Ok(PAYLOAD)), "{cipher:?} open");
    }
}

#[test]
fn shadowsocks_chunks_do_not_allocate() {
    let plain = payload();
    for method in Method::ALL {
        let subkey = vec![9u8; method.key_len()];
        let mut sealer = shadowsocks::ChunkSealer::new(method, &subkey);
        let mut opener = shadowsocks::ChunkOpener::new(method, &subkey);
        let mut wire = Vec::with_capacity(CHUNKS * sealer.sealed_len(PAYLOAD));
        let (n, ()) = allocations(|| {
            for _ in 0..CHUNKS {
                sealer.seal(&plain, &mut wire);
            }
        });
        assert_eq!(n, 0, "{method} seal");
        let (n, opened) = allocations(|| {
            let (mut at, mut opened) = (0, 0);
            while at < wire.len() {
                match opener.open(&mut wire[at..]).expect("opens") {
                    shadowsocks::Opened::Chunk { plain, consumed } => {
                        opened += plain.len();
                        at += consumed;
                    }
                    shadowsocks::Opened::NeedMore { .. } => panic!("{method}: whole chunks"),
                }
            }
            opened
        });
        assert_eq!((n, opened), (0, CHUNKS * PAYLOAD), "{method} open");
    }
}

#[test]
fn vmess_body_chunks_do_not_allocate() {
    let plain = payload();
    let mut cases = 0;
    for security in [Security::Aes128Gcm, Security::ChaCha20Poly1305, Security::None] {
        // Every valid option set: chunk stream, masking, padding (needs masking), auth length.
        for bits in 0..16u8 {
            let options = Options((bits & 1) | (bits & 0b1110) << 1);
            if options.contains(Options::GLOBAL_PADDING) && !options.contains(Options::CHUNK_MASKING) {
                continue;
            }
            for command in [Command::Tcp, Command::Udp] {
                let header = RequestHeader {
                    body_iv: [3; 16],
                    body_key: [4; 16],
                    response_auth: 1,
                    options,
                    security,
                    command,
                    destination: None,
                };
                let case = format!("{security:?} {:#04x} {command:?}", options.0);
                let mut sealer = vmess::ChunkSealer::new(&header, Direction::Request, [5; 32]).unwrap();
                let mut opener = vmess::ChunkOpener::new(&header, Direction::Request).unwrap();
                // UDP packets go one per chunk, so they are at most one chunk long.
                let piece =
                    if command == Command::Tcp { &plain[..] } else { &plain[..sealer.max_payload().min(PAYLOAD)] };
                let mut wire = Vec::with_capacity(2 * CHUNKS * PAYLOAD);
                let (n, ()) = allocations(|| {
                    for _ in 0..CHUNKS {
                        sealer.seal(piece, &mut wire).unwrap();
                    }
                });
                assert_eq!(n, 0, "{case} seal");
                let (n, opened) = allocations(|| {
                    let (mut at, mut opened) = (0, 0);
                    while at < wire.len() {
                        match opener.open(&mut wire[at..]).unwrap() {
                            vmess::Chunk::Data { plain, consumed } => {
                                opened += plain.len();
                                at += consumed;
                            }
                            vmess::Chunk::End { .. } => panic!("{case}: no end chunk was sealed"),
                        }
                    }
                    opened
                });
                assert_eq!((n, opened), (0, CHUNKS * piece.len()), "{case} open");
                cases += 1;
            }
        }
    }
    assert!(cases > 30);
}

fn ipv4() -> Destination {
    Destination { addr: Address::Ip(IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))), port: 443 }
}

fn domain() -> Destination {
    Destination { addr: Address::Domain("www.example.com".into()), port: 443 }
}

/// The decoded header owns its domain name (`Box<str>`): one allocation for a domain, none for
/// an IP. Nothing else allocates, except one boxed XChaCha20 key per classic Shadowsocks session
/// (`AeadKey` boxes that cipher's key). The Shadowsocks 2022 decode also records its salt in the
/// replay filter, whose set grows (amortised); here it already has room.
#[test]
fn header_decodes_allocate_only_what_they_return() {
    for (dest, expected) in [(ipv4(), 0), (domain(), 1)] {
        let mut bytes = Vec::new();
        let header = vless::RequestHeader {
            user: uuid::Uuid::from_u128(1),
            flow: String::new(),
            command: vless::Command::Tcp,
            destination: Some(dest.clone()),
        };
        header.encode(&mut bytes);
        let (n, r) = allocations(|| vless::RequestHeader::decode(&mut &bytes[..]));
        assert_eq!((n, r.map(|h| h.destination)), (expected, Ok(Some(dest.clone()))), "vless");

        bytes.clear();
        let request = trojan::Request {
            key: trojan::password_key("pw"),
            command: trojan::Command::Connect,
            destination: dest.clone(),
        };
        request.encode(&mut bytes);
        let (n, r) = allocations(|| trojan::Request::decode(&mut &bytes[..]));
        assert_eq!((n, r.map(|h| h.destination)), (expected, Ok(dest.clone())), "trojan");

        bytes.clear();
        socks::encode_greeting(&[socks::method::NO_AUTH], &mut bytes);
        socks::Request { command: socks::Command::Connect, destination: dest.clone() }.encode(&mut bytes);
        let (n, r) = allocations(|| {
            let mut buf = &bytes[..];
            socks::Greeting::decode(&mut buf).unwrap();
            socks::Request::decode(&mut buf)
        });
        assert_eq!((n, r.map(|h| h.destination)), (expected, Ok(dest.clone())), "socks5");
    }

    // HTTP: the host is a domain; the rewritten head goes into a reused Vec.
    let mut forward = Vec::with_capacity(1024);
    for head in [
        &b"CONNECT www.example.com:443 HTTP/1.1\r\nHost: www.example.com:443\r\nProxy-Connection: keep-alive\r\n\r\n"[..],
        b"GET http://www.example.com/ HTTP/1.1\r\nHost: www.example.com\r\nAccept: */*\r\nProxy-Connection: keep-alive\r\n\r\n",
    ] {
        let (n, r) = allocations(|| http::RequestHead::parse(head, &mut forward));
        assert!(r.is_ok());
        assert_eq!(n, 1, "http {}", String::from_utf8_lossy(&head[..8]));
    }

    // VMess: header keys are ring keys (inline), the header an IP.
    let user = vmess::UserKey::new(&uuid::Uuid::from_u128(7));
    let (security, options) = vmess::SecurityConfig::Aes128Gcm.resolve(true, false);
    let request = RequestHeader {
        body_iv: [1; 16],
        body_key: [2; 16],
        response_auth: 3,
        options,
        security,
        command: Command::Tcp,
        destination: Some(ipv4()),
    };
    let mut sealed = Vec::new();
    let random = vmess::SealRandom { auth_id: [1; 4], nonce: [2; 8], padding_len: 0, padding: [0; 15] };
    request.seal(&user, 1_796_000_000, &random, &mut sealed);
    let (n, r) = allocations(|| vmess::RequestOpener::new(&user).open(&mut sealed).map(|(h, _)| h));
    assert_eq!((n, r), (0, Ok(request)), "vmess open");
    let stranger = vmess::UserKey::new(&uuid::Uuid::from_u128(8)).auth_id().encode(1_796_000_000, [0; 4]);
    let users: Vec<vmess::UserKey> = (0..100).map(|i| vmess::UserKey::new(&uuid::Uuid::from_u128(100 + i))).collect();
    let mut filter = vmess::ReplayFilter::new();
    let (n, r) = allocations(|| {
        vmess::find_user(users.iter().map(|u| (u.auth_id(), u)), &stranger, 1_796_000_000, &mut filter).map(|_| ())
    });
    assert_eq!((n, r), (0, Err(vmess::VmessError::UnknownUser)), "vmess find_user");

    // Shadowsocks classic: decode (the XChaCha20 key is boxed) and the trial-decryption scan.
    for method in [Method::Aes128Gcm, Method::Aes256Gcm, Method::ChaCha20Poly1305, Method::XChaCha20Poly1305] {
        let key = MasterKey::from_password(method, "pw").unwrap();
        let mut flight = Vec::new();
        classic::encode_request(method, &key, &vec![5; method.salt_len()], &ipv4(), b"hi", &mut flight);
        let keys: Vec<MasterKey> =
            (0..100).map(|i| MasterKey::from_password(method, &format!("other-{i}")).unwrap()).collect();
        let (n, r) = allocations(|| classic::find_user(method, &keys, &flight));
        assert_eq!((n, r), (0, Err(shadowsocks::Error::UnknownUser)), "{method} find_user");
        let expected = usize::from(method == Method::XChaCha20Poly1305);
        let (n, r) = allocations(|| classic::decode_request(method, &key, &mut flight).map(|(req, _)| req.destination));
        assert_eq!((n, r), (expected, Ok(ipv4())), "{method} decode_request");
    }

    // Shadowsocks 2022, single and multi-user, with a filter whose set already has room.
    for method in [Method::Blake3Aes128Gcm, Method::Blake3Aes256Gcm, Method::Blake3ChaCha20Poly1305] {
        let psk = MasterKey::from_bytes(&[7; 32][..method.key_len()]);
        let users: Vec<MasterKey> = (1..=3u8).map(|i| MasterKey::from_bytes(&[i; 32][..method.key_len()])).collect();
        let multi = method.supports_identity_headers();
        let server = if multi {
            ss2022::Server::with_users(method, psk, users.clone()).unwrap()
        } else {
            ss2022::Server::new(method, psk)
        };
        let identities = if multi { vec![psk] } else { vec![] };
        // 60 salts held: the set has room for the 16 below without growing.
        let mut filter = shadowsocks::ReplayFilter::new(1024);
        for j in 100..160u8 {
            filter.check_and_insert(&vec![j; method.salt_len()], 1_796_000_000).unwrap();
        }
        for i in 0..16u8 {
            let salt = vec![i; method.salt_len()];
            let request = ss2022::ClientRequest {
                method,
                identities: &identities,
                key: if multi { &users[2] } else { &psk },
                salt: &salt,
                timestamp: 1_796_000_000,
                destination: &ipv4(),
                padding_len: 4,
            };
            let mut flight = Vec::new();
            request.encode(b"hi", &mut flight);
            let (n, r) =
                allocations(|| server.decode_request(&mut flight, 1_796_000_000, &mut filter).map(|(r, _)| r.user));
            assert_eq!((n, r), (0, Ok(multi.then_some(2))), "{method} decode_request, salt {i}");
        }
    }
}
