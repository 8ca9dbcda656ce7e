//! Fuzzes the Auth TLV's checks on untrusted bytes: the MAC check over any input (it parses before it
//! hashes), the replay window over whatever Auth TLV the input decodes to, and the Time TLV check. None may
//! panic, and a message signed with the key must verify after any decode/encode round trip.
#![no_main]

use common::convert::auth::{self, ReplayWindow};
use common::convert::{Decoded, Time, decode};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzz key, 32 bytes long, really.";

fuzz_target!(|data: &[u8]| {
    let _ = auth::verify_mac(KEY, data);
    if let Decoded::Done { message, consumed } = decode(data) {
        let _ = auth::verify_mac(KEY, &data[..consumed]);
        if let Some(a) = message.auth() {
            let mut window = ReplayWindow::new(30, 4);
            let now = a.timestamp.wrapping_add(u64::from(data[0]));
            let first = window.check(now, a);
            // A nonce the window took is never taken again.
            if first.is_ok() {
                assert!(window.check(now, a).is_err());
            }
            window.expire(now.saturating_add(31));
            assert!(window.len() <= 4);
            // Whatever the message, signing it with the key makes its MAC check out.
            let mut bytes = message.to_bytes().expect("decoded messages are encodable");
            auth::sign(KEY, &mut bytes).expect("a message ending in Auth can be signed");
            auth::verify_mac(KEY, &bytes).expect("signed with the key");
        }
        if let Some(t) = message.time() {
            let _ = auth::verify_time(KEY, &[0; 16], t);
        }
    }
    if data.len() >= 40 {
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&data[8..40]);
        let t = Time { unix_ms: u64::from_be_bytes(data[..8].try_into().unwrap()), mac };
        let nonce = [data[0]; 16];
        assert_eq!(auth::verify_time(KEY, &nonce, &auth::signed_time(KEY, &nonce, t.unix_ms)), Ok(t.unix_ms));
        let _ = auth::verify_time(KEY, &nonce, &t);
    }
});
