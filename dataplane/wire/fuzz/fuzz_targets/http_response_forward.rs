#![no_main]

//! Parses an upstream response head; the head rewritten for the client must parse again, to the
//! same status and body framing.

use libfuzzer_sys::fuzz_target;
use shardray_wire::http::{HttpError, ResponseHead};

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let Ok(head) = ResponseHead::forward(data, &mut out) else { return };
    match ResponseHead::parse(&out) {
        Ok(again) => assert_eq!((again.status, again.head_len, again.body), (head.status, out.len(), head.body)),
        Err(HttpError::TooManyHeaders | HttpError::HeadTooLarge) => {}
        Err(e) => panic!("rewritten head does not parse: {e:?}"),
    }
});
