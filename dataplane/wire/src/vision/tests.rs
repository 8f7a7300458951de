use super::*;

const ID: [u8; 16] = *b"0123456789abcdef";

/// A small deterministic generator (xorshift), for padding lengths and splits.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

/// A TLS 1.3 ServerHello record (supported_versions 0x0304, the given suite), 90 bytes of body.
fn server_hello(suite: u16) -> Vec<u8> {
    let mut body = vec![0x02, 0, 0, 0, 0x03, 0x03];
    body.extend_from_slice(&[7; 32]); // random
    body.push(32); // session id length
    body.extend_from_slice(&[9; 32]);
    body.extend_from_slice(&suite.to_be_bytes());
    body.push(0); // compression
    let exts = [&[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04][..], &[0x00, 0x33, 0x00, 0x02, 0xaa, 0xbb]].concat();
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut rec = vec![0x16, 0x03, 0x03];
    rec.extend_from_slice(&(body.len() as u16).to_be_bytes());
    rec.extend_from_slice(&body);
    rec
}

fn client_hello() -> Vec<u8> {
    let mut rec = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01];
    rec.resize(5 + 0x40, 0x11);
    rec
}

fn app_data(len: usize, fill: u8) -> Vec<u8> {
    let mut rec = vec![0x17, 0x03, 0x03];
    rec.extend_from_slice(&(len as u16).to_be_bytes());
    rec.resize(5 + len, fill);
    rec
}

/// Decodes `wire` fed in the given split sizes (cycled), into outputs of `out_room` bytes.
fn decode_split(wire: &[u8], splits: &[usize], out_room: usize) -> (Vec<u8>, Mode, usize) {
    let mut u = Unpadder::new(ID);
    let mut got = Vec::new();
    let mut at = 0;
    let mut k = 0;
    let mut out = vec![0u8; out_room];
    let mut mode_changed_at = None;
    while at < wire.len() {
        let end = (at + splits[k % splits.len()].max(1)).min(wire.len());
        k += 1;
        let mut chunk = &wire[at..end];
        while !chunk.is_empty() {
            let before = u.mode();
            let (used, wrote) = u.decode(chunk, &mut out);
            got.extend_from_slice(&out[..wrote]);
            chunk = &chunk[used..];
            at += used;
            if before == Mode::Padded && u.mode() != Mode::Padded && mode_changed_at.is_none() {
                mode_changed_at = Some(at);
            }
            assert!(used > 0 || wrote > 0, "no progress");
        }
    }
    (got, u.mode(), mode_changed_at.unwrap_or(usize::MAX))
}

#[test]
fn blocks_decode_the_same_under_every_split() {
    let mut rng = Rng(0x1234_5678);
    let mut wire = Vec::new();
    let mut uuid = Some(ID);
    let payloads: Vec<Vec<u8>> = (0..5).map(|i| (0..(i * 1777 + 3)).map(|j| (j * 7 + i) as u8).collect()).collect();
    for (i, p) in payloads.iter().enumerate() {
        let cmd = if i == payloads.len() - 1 { DIRECT } else { CONTINUE };
        let pad = padding_len(p.len(), true, &mut |n| rng.below(n));
        encode_block(&mut uuid, cmd, p, pad, &mut wire);
    }
    let block_end = wire.len();
    wire.extend_from_slice(b"raw bytes after the direct block");
    let mut expected: Vec<u8> = payloads.concat();
    expected.extend_from_slice(b"raw bytes after the direct block");
    for splits in [vec![1], vec![2], vec![3, 1, 7], vec![5], vec![16, 5, 1], vec![4096], vec![wire.len()]] {
        for room in [1, 3, 64, 9000] {
            let (got, mode, changed) = decode_split(&wire, &splits, room);
            assert_eq!(mode, Mode::Direct, "splits {splits:?} room {room}");
            assert!(got == expected, "splits {splits:?} room {room}");
            // The decoder stopped right at the end of the direct block.
            assert_eq!(changed, block_end, "splits {splits:?} room {room}");
        }
    }
    for _ in 0..200 {
        let splits: Vec<usize> = (0..8).map(|_| rng.below(40) as usize + 1).collect();
        let room = rng.below(100) as usize + 1;
        let (got, mode, _) = decode_split(&wire, &splits, room);
        assert_eq!(mode, Mode::Direct);
        assert!(got == expected);
    }
}

#[test]
fn input_without_the_uuid_passes_as_it_is() {
    let data = b"0123456789abcdeX and more".to_vec();
    for split in [1, 4, 100] {
        let (got, mode, _) = decode_split(&data, &[split], 7);
        assert_eq!(got, data);
        assert_eq!(mode, Mode::Plain);
    }
}

#[test]
fn end_block_leaves_plain_bytes() {
    let mut wire = Vec::new();
    let mut uuid = Some(ID);
    encode_block(&mut uuid, END, b"hello", 3, &mut wire);
    wire.extend_from_slice(b" world");
    let (got, mode, _) = decode_split(&wire, &[2], 4);
    assert_eq!(got, b"hello world");
    assert_eq!(mode, Mode::Plain);
}

#[test]
fn padding_lengths_follow_xray() {
    let mut rng = Rng(99);
    for _ in 0..1000 {
        let short = padding_len(100, true, &mut |n| rng.below(n));
        assert!((800..1300).contains(&short), "{short}");
        assert!(padding_len(1000, true, &mut |n| rng.below(n)) < 256);
        assert!(padding_len(10, false, &mut |n| rng.below(n)) < 256);
        assert_eq!(padding_len(MAX_CONTENT, true, &mut |n| rng.below(n)), 0);
    }
}

#[test]
fn filter_finds_tls13_and_refuses_ccm8() {
    let mut f = TlsFilter::default();
    f.observe(&client_hello());
    assert!(f.is_tls && !f.tls12_or_above && f.filtering());
    f.observe(&server_hello(0x1301));
    assert!(f.tls12_or_above && f.direct_allowed && !f.filtering());

    let mut f = TlsFilter::default();
    f.observe(&server_hello(CCM_8));
    assert!(f.tls12_or_above && !f.direct_allowed && !f.filtering());

    // A ServerHello without supported_versions is TLS 1.2: no direct.
    let mut hello = server_hello(0x1301);
    let at = hello.windows(6).position(|w| w == TLS13_SUPPORTED_VERSIONS).unwrap();
    hello[at + 1] = 0x2c;
    let mut f = TlsFilter::default();
    f.observe(&hello);
    assert!(!f.direct_allowed && !f.filtering());
}

#[test]
fn complete_records() {
    assert!(is_complete_records(&app_data(10, 1)));
    assert!(is_complete_records(&[app_data(10, 1), app_data(300, 2)].concat()));
    assert!(!is_complete_records(&app_data(10, 1)[..12]));
    assert!(!is_complete_records(&[app_data(10, 1), client_hello()].concat()));
    assert!(!is_complete_records(&[]));
}

/// The server's side of an inner TLS 1.3 session: the ServerHello flight is padded, the first
/// complete application-data write goes out as the direct block; the client decodes it all.
#[test]
fn writer_goes_direct_after_tls13_and_reader_follows() {
    let mut rng = Rng(7);
    let mut filter = TlsFilter::default();
    let mut padder = Padder::new(ID);
    let mut wire = Vec::new();
    filter.observe(&client_hello()); // the reader's side saw the ClientHello
    let flight = [server_hello(0x1302), vec![0x14, 0x03, 0x03, 0x00, 0x01, 0x01], app_data(2000, 3)].concat();
    assert_eq!(padder.encode(&flight, &mut filter, &mut |n| rng.below(n), &mut wire), After::Same);
    assert!(filter.direct_allowed);
    let records = [app_data(20000, 4), app_data(100, 5)].concat();
    assert_eq!(padder.encode(&records, &mut filter, &mut |n| rng.below(n), &mut wire), After::Direct);
    let direct_end = wire.len();
    wire.extend_from_slice(b"raw");
    let expected = [flight, records, b"raw".to_vec()].concat();
    let (got, mode, changed) = decode_split(&wire, &[1000, 3], 5000);
    assert_eq!(mode, Mode::Direct);
    assert!(got == expected);
    assert_eq!(changed, direct_end);
}

/// Not TLS inside: padding ends after a few packets with the end command, never direct.
#[test]
fn writer_ends_padding_for_other_traffic() {
    let mut rng = Rng(3);
    let mut filter = TlsFilter::default();
    let mut padder = Padder::new(ID);
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut afters = Vec::new();
    for i in 0..10u8 {
        let data = vec![i; 100 + usize::from(i) * 1000];
        afters.push(padder.encode(&data, &mut filter, &mut |n| rng.below(n), &mut wire));
        expected.extend_from_slice(&data);
    }
    assert!(!afters.contains(&After::Direct));
    assert!(afters.contains(&After::Plain));
    assert!(!padder.padding());
    let (got, mode, _) = decode_split(&wire, &[333], 100);
    assert_eq!(mode, Mode::Plain);
    assert!(got == expected);
}

#[test]
fn empty_first_write_is_one_long_block_with_the_uuid() {
    let mut filter = TlsFilter::default();
    let mut padder = Padder::new(ID);
    let mut wire = Vec::new();
    padder.encode(&[], &mut filter, &mut |_| 0, &mut wire);
    assert_eq!(&wire[..16], &ID);
    assert_eq!(wire[16], CONTINUE);
    assert_eq!(wire.len(), 21 + 900);
    let (got, mode, _) = decode_split(&wire, &[7], 10);
    assert!(got.is_empty());
    assert_eq!(mode, Mode::Padded);
}
