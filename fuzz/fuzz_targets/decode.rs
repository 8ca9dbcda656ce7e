//! Fuzzes the Convert decoder: any input must decode without panicking, and every message it decodes must
//! re-encode to bytes that decode to the same value. Also runs the Auth MAC check over the input, which
//! parses before it hashes.
#![no_main]

use common::convert::{Decoded, MAX_MESSAGE_LEN, auth, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Decoded::Done { message, consumed } = decode(data) {
        assert!(consumed <= data.len() && consumed <= MAX_MESSAGE_LEN);
        let again = message.to_bytes().expect("decoded messages are encodable");
        assert!(again.len() <= consumed);
        assert_eq!(decode(&again), Decoded::Done { message, consumed: again.len() });
        let _ = auth::verify_mac(b"fuzz key", &data[..consumed]);
    }
});
