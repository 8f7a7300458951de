//! Vectors computed from the scheme with Python's `cryptography` (X25519, HKDF-SHA256,
//! AES-256-GCM, HMAC-SHA512), independently of this code.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    hex(s).try_into().unwrap()
}

fn server_key() -> [u8; 32] {
    std::array::from_fn(|i| i as u8 + 1)
}

fn random() -> [u8; 32] {
    std::array::from_fn(|i| i as u8 + 200)
}

/// A ClientHello for `www.example.com` with an X25519 share, its session id sealed for
/// `server_key()`: version 1.8.0, time 1767225600, short id 0123456789abcdef.
const HELLO: &str = "010000bc0303c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7207edc40b21bc10c5f40ea58638cee51be51e3398c8f9b9c6b489badb67f6babd900061301130213030100006d00000014001200000f7777772e6578616d706c652e636f6d002b0003020304000a00040002001d003300260024001d00205714769d116bf76436ae74bc793d2c30ad1903c59ac5273805c7e2698b410c36000d00060004040308040010000e000c02683208687474702f312e31";
const AUTH_KEY: &str = "67aede71c26b213a04d0ed074522076e6c0387720fdd6a7bc56067b033bab67b";
const TIME: u64 = 1_767_225_600;

fn record(message: &[u8]) -> Vec<u8> {
    let mut r = vec![0x16, 3, 1, (message.len() >> 8) as u8, message.len() as u8];
    r.extend_from_slice(message);
    r
}

fn accept<'a>(key: &'a [u8; 32], ids: &'a [[u8; 8]]) -> Acceptance<'a> {
    Acceptance { private_key: key, short_ids: ids, min_client_ver: None, max_client_ver: None, max_time_diff_ms: 0 }
}

#[test]
fn public_key_and_auth_key_match_the_vectors() {
    assert_eq!(public_key(&server_key()), arr("07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c"));
    let client = arr("5714769d116bf76436ae74bc793d2c30ad1903c59ac5273805c7e2698b410c36");
    assert_eq!(auth_key(&server_key(), &client, &random()), Some(arr(AUTH_KEY)));
    // A low-order point gives no key (X25519 would be all zero).
    assert_eq!(auth_key(&server_key(), &[0; 32], &random()), None);
}

#[test]
fn gathers_and_parses_the_hello() {
    let msg = hex(HELLO);
    let stream = record(&msg);
    let mut out = Vec::new();
    gather(&stream, &mut out).unwrap();
    assert_eq!(out, msg);
    // Every shorter prefix asks for more.
    for n in 0..stream.len() {
        assert_eq!(gather(&stream[..n], &mut out), Err(HelloError::UnexpectedEnd), "{n}");
    }
    // Split over two records, as a client may.
    let mut split = record(&msg[..100]);
    split.extend_from_slice(&record(&msg[100..]));
    gather(&split, &mut out).unwrap();
    assert_eq!(out, msg);
    let hello = ClientHello::parse(&out).unwrap();
    assert_eq!(hello.server_name, Some("www.example.com"));
    assert!(hello.tls13);
    assert_eq!(hello.random, &random());
    assert_eq!(hello.first_alpn, Some(&b"h2"[..]));
    assert_eq!(
        hello.x25519.map(|k| k.to_vec()),
        Some(hex("5714769d116bf76436ae74bc793d2c30ad1903c59ac5273805c7e2698b410c36"))
    );
}

#[test]
fn garbage_is_refused_without_waiting() {
    let mut out = Vec::new();
    assert_eq!(gather(b"GET / HTTP/1.1\r\n", &mut out), Err(HelloError::NotHandshake));
    assert_eq!(gather(b"G", &mut out), Err(HelloError::NotHandshake));
    assert_eq!(gather(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0], &mut out), Err(HelloError::NotClientHello));
    assert_eq!(gather(&[0x16, 3, 1, 0, 0], &mut out), Err(HelloError::Malformed));
    assert_eq!(gather(&[0x16, 3, 1, 0, 4, 1, 1, 0, 0], &mut out), Err(HelloError::TooLong));
    // Every truncation of a real hello's message fails to parse, and none panics.
    let msg = hex(HELLO);
    for n in 0..msg.len() {
        assert!(ClientHello::parse(&msg[..n]).is_err(), "{n}");
    }
}

#[test]
fn authenticates_the_vector_and_checks_each_rule() {
    let msg = hex(HELLO);
    let hello = ClientHello::parse(&msg).unwrap();
    let key = server_key();
    let id = arr::<8>("0123456789abcdef");
    let ids = [id];
    let now = TIME * 1000;
    let got = authenticate(&hello, true, &accept(&key, &ids), now).unwrap();
    assert_eq!(
        got,
        Authenticated { auth_key: arr(AUTH_KEY), client_ver: [1, 8, 0], client_time: TIME as u32, short_id: id }
    );

    assert_eq!(authenticate(&hello, false, &accept(&key, &ids), now), Err(AuthError::ServerName));
    let other = [0u8; 8];
    assert_eq!(authenticate(&hello, true, &accept(&key, &[other]), now), Err(AuthError::ShortId));
    let wrong = [9u8; 32];
    assert_eq!(authenticate(&hello, true, &accept(&wrong, &ids), now), Err(AuthError::Unsealed));
    let versions = |min, max| Acceptance { min_client_ver: min, max_client_ver: max, ..accept(&key, &ids) };
    assert_eq!(
        authenticate(&hello, true, &versions(Some([1, 8, 1]), None), now),
        Err(AuthError::ClientTooOld([1, 8, 0]))
    );
    assert_eq!(
        authenticate(&hello, true, &versions(None, Some([1, 7, 9])), now),
        Err(AuthError::ClientTooNew([1, 8, 0]))
    );
    assert!(authenticate(&hello, true, &versions(Some([1, 8, 0]), Some([1, 8, 0])), now).is_ok());
    let timed = Acceptance { max_time_diff_ms: 60_000, ..accept(&key, &ids) };
    assert!(authenticate(&hello, true, &timed, now + 60_000).is_ok());
    assert_eq!(authenticate(&hello, true, &timed, now + 60_001), Err(AuthError::TimeDiff(60_001)));
    assert_eq!(authenticate(&hello, true, &timed, now - 61_000), Err(AuthError::TimeDiff(-61_000)));

    // One flipped bit anywhere in the message (the AAD) breaks the seal.
    let mut tampered = msg.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let hello = ClientHello::parse(&tampered).unwrap();
    assert_eq!(authenticate(&hello, true, &accept(&key, &ids), now), Err(AuthError::Unsealed));
}

#[test]
fn the_hybrid_share_lends_its_x25519_half() {
    // A second vector: only an X25519MLKEM768 share (1184 bytes of ML-KEM key, then the
    // client's X25519 key), version 25.1.30, short id ab.
    let prefix = "010005360303c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e72066d55eb21bc10c5feac91d0405459c51eaaa8421b9edb99fdec1015ada3de03700021301010004eb00000014001200000f7777772e6578616d706c652e636f6d002b0005047a7a0304003304c604c411ec04c0";
    let mut msg = hex(prefix);
    msg.extend_from_slice(&[7u8; MLKEM768_KEY]);
    msg.extend_from_slice(&hex("5714769d116bf76436ae74bc793d2c30ad1903c59ac5273805c7e2698b410c36"));
    let hello = ClientHello::parse(&msg).unwrap();
    assert!(hello.tls13, "TLS 1.3 after a GREASE version");
    let key = server_key();
    let ids = [arr::<8>("ab00000000000000")];
    let got = authenticate(&hello, true, &accept(&key, &ids), TIME * 1000).unwrap();
    assert_eq!(got.auth_key, arr(AUTH_KEY));
    assert_eq!(got.client_ver, [25, 1, 30]);
}

#[test]
fn the_certificate_carries_the_hmac_in_its_signature() {
    let ed_public: [u8; 32] = std::array::from_fn(|i| i as u8 + 50);
    let cert = TemporaryCert::new(ed_public).for_auth_key(&arr(AUTH_KEY));
    let hmac = hex("761a8eb8851520e7fe22aa8f9a7e3de6b74829e3c6197f75b65514f9a2d07c2312323c1d28a5f5865684163cbc528f3925d2a21db3a50e59eb5b6973d8291415");
    assert_eq!(&cert[cert.len() - 64..], &hmac[..]);
    // Well-formed DER: the outer SEQUENCE spans the whole, and holds the TBS, the algorithm
    // and a 65-byte BIT STRING (no unused bits) that ends it.
    assert_eq!(&cert[..3], &[0x30, 0x81, (cert.len() - 3) as u8]);
    let tbs_len = cert[4] as usize;
    assert_eq!(cert[3], 0x30);
    let after_tbs = 5 + tbs_len;
    assert_eq!(&cert[after_tbs..after_tbs + 7], &ED25519_ALG);
    assert_eq!(&cert[after_tbs + 7..after_tbs + 10], &[0x03, 0x41, 0x00]);
    assert_eq!(after_tbs + 10 + 64, cert.len());
    // The SubjectPublicKeyInfo holds the key right before the TBS ends.
    assert_eq!(&cert[after_tbs - 32..after_tbs], &ed_public);
}

#[test]
fn mutated_hellos_never_panic() {
    // A deterministic stand-in for the fuzz target: the vector's record with bytes flipped,
    // lengths bent, and cut anywhere, through gather, parse and authenticate.
    let base = record(&hex(HELLO));
    let key = server_key();
    let ids = [[0u8; 8]];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    for _ in 0..20_000 {
        let mut data = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % data.len();
            data[at] = next() as u8;
        }
        data.truncate((next() as usize) % (data.len() + 1));
        if gather(&data, &mut out).is_ok() {
            if let Ok(hello) = ClientHello::parse(&out) {
                let _ = authenticate(&hello, true, &accept(&key, &ids), TIME * 1000);
            }
        }
    }
}
