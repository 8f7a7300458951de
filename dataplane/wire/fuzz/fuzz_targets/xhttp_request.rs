#![no_main]

//! Sorts a request head into an XHTTP request as a server does (host, path, padding, then
//! download, packet, upload stream or stream-one by method, session id and seq), under
//! settings the first two bytes choose; then writes the response headers for it.

use libfuzzer_sys::fuzz_target;
use shardray_wire::xhttp::{Mode, PaddingMethod, Placement, Request, RequestHead, Settings};

fuzz_target!(|data: &[u8]| {
    let [a, b, rest @ ..] = data else { return };
    let s = settings(*a, *b);
    // The head as text: "METHOD TARGET", the host, then "name: value" lines.
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let (method, target) = lines.next().unwrap_or("").split_once(' ').unwrap_or(("GET", "/"));
    let host = lines.next().unwrap_or("");
    let fields: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(": ")).collect();
    let head = RequestHead { method, target, host, headers: &fields };
    match s.classify(&head) {
        Ok(kind) => {
            match &kind {
                Request::Download { session } | Request::StreamUp { session } => assert!(!session.is_empty()),
                Request::Packet { session, inline, body, .. } => {
                    assert!(!session.is_empty());
                    let inline_ok =
                        matches!(s.uplink_data_placement, Placement::Header | Placement::Cookie | Placement::Auto);
                    assert!(inline.is_empty() || inline_ok, "{kind:?}");
                    assert_eq!(*body, matches!(s.uplink_data_placement, Placement::Body | Placement::Auto));
                }
                Request::Preflight => assert_eq!(method, "OPTIONS"),
                Request::StreamOne => {}
            }
            assert_eq!(s.classify(&head), Ok(kind), "the same head, another answer");
            for (name, _) in s.response_headers(&head, 100) {
                assert!(!name.is_empty());
            }
        }
        Err(refused) => assert!([400, 404, 405, 500].contains(&refused.status()), "{refused:?}"),
    }
});

/// Settings under path `/xh/` (host `example.com` or any): `a` picks the mode and the
/// session, seq and uplink data placements, `b` the padding.
fn settings(a: u8, b: u8) -> Settings {
    let meta = [Placement::Path, Placement::Query, Placement::Header, Placement::Cookie];
    let data = [Placement::Auto, Placement::Body, Placement::Header, Placement::Cookie];
    let pad = [Placement::QueryInHeader, Placement::Header, Placement::Cookie, Placement::Query];
    let mut s = Settings {
        path: "/xh/".into(),
        mode: [Mode::Auto, Mode::PacketUp, Mode::StreamUp, Mode::StreamOne][usize::from(a & 3)],
        session_placement: meta[usize::from(a >> 2 & 3)],
        seq_placement: meta[usize::from(a >> 4 & 3)],
        uplink_data_placement: data[usize::from(a >> 6)],
        ..Settings::default()
    };
    let key = |p: Placement, cookie: &str, header: &str| match p {
        Placement::Query | Placement::Cookie => cookie.to_owned(),
        Placement::Header => header.to_owned(),
        _ => String::new(),
    };
    s.session_key = key(s.session_placement, "x_session", "X-Session");
    s.seq_key = key(s.seq_placement, "x_seq", "X-Seq");
    if s.uplink_data_placement == Placement::Cookie {
        s.uplink_data_key = "x_data".into();
    }
    s.padding.obfs_mode = b & 1 != 0;
    s.padding.placement = pad[usize::from(b >> 1 & 3)];
    if b & 8 != 0 {
        s.padding.method = PaddingMethod::Tokenish;
    }
    if b & 16 != 0 {
        s.host = "example.com".into();
    }
    s
}
