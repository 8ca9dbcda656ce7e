//! Fuzzes the probe wire format and hag's probe responder on untrusted datagrams: the parsers, the MAC check
//! and the responder's whole decision (rate limit, CPE lookup, skew, reply). Nothing may panic, and a reply
//! the responder sends must parse as a reply.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::probe::{Now, Responder, ResponderConfig, wire};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzz key, 32 bytes long, really.";

fuzz_target!(|data: &[u8]| {
    let _ = wire::peek_kind(data);
    if let Ok(r) = wire::parse_request(data) {
        let _ = r.claimed();
        let _ = r.verify(KEY);
    }
    if let Ok(r) = wire::parse_reply(data) {
        let _ = r.verify(KEY);
    }
    let mut responder = Responder::new(ResponderConfig::default());
    // The wall clock at the request's own timestamp when it has one, so the skew check passes sometimes.
    let unix = wire::parse_request(data)
        .map_or(Duration::from_secs(1_700_000_000), |r| Duration::from_micros(r.claimed().timestamp_us));
    let now = Now { mono: Instant::now(), unix };
    let src = IpAddr::V4(Ipv4Addr::new(192, 0, 2, data.first().copied().unwrap_or(1)));
    if let Some(reply) = responder.handle(now, src, data, |_id: &str| Some(KEY)) {
        assert!(wire::parse_reply(&reply).is_ok(), "the responder's reply parses");
    }
});
