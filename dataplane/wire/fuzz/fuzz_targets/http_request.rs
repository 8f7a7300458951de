#![no_main]

//! Parses a request head; the head rewritten for the upstream must parse again, to the same
//! body framing (else the upstream and the relay would disagree on where the body ends).

use libfuzzer_sys::fuzz_target;
use shardray_wire::http::{HttpError, RequestHead, RequestKind};

fuzz_target!(|data: &[u8]| {
    let mut forward = Vec::new();
    let Ok(head) = RequestHead::parse(data, &mut forward) else { return };
    if head.kind != RequestKind::Connect {
        match RequestHead::parse(&forward, &mut Vec::new()) {
            Ok(again) => assert_eq!((again.head_len, again.body), (forward.len(), head.body)),
            Err(HttpError::TooManyHeaders | HttpError::HeadTooLarge) => {}
            Err(e) => panic!("rewritten head does not parse: {e:?}"),
        }
    }
});
