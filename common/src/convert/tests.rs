//! Golden-byte, error, property and replay-window tests for the Convert codec.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;
use sha2::Sha256;

use super::auth::{self, AuthError, ReplayWindow};
use super::*;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).unwrap()
}

fn msg(tlvs: Vec<Tlv>) -> Message {
    Message { tlvs }
}

/// bytes -> value and value -> the same bytes, and the whole buffer is consumed.
fn golden(bytes: &[u8], value: &Message) {
    assert_eq!(decode(bytes), Decoded::Done { message: value.clone(), consumed: bytes.len() }, "decode");
    assert_eq!(value.to_bytes().unwrap(), bytes, "encode");
    assert_eq!(value.buffer_len(), bytes.len(), "buffer_len");
}

fn err(bytes: &[u8]) -> ErrorCode {
    match decode(bytes) {
        Decoded::Error(c) => c,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn golden_bare_success_reply() {
    golden(&h("01012263"), &Message::success());
}

#[test]
fn golden_info() {
    golden(&h("01022263 01010000"), &msg(vec![Tlv::Info]));
}

#[test]
fn golden_connect_ipv4_is_v4_mapped_on_the_wire() {
    let remote = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 443));
    golden(&h("01062263 0a0501bb 00000000 00000000 0000ffff c0000201"), &Message::connect_request(remote));
}

#[test]
fn golden_connect_ipv6_with_options() {
    let remote = SocketAddr::from(("2001:db8::1".parse::<Ipv6Addr>().unwrap(), 80));
    // MSS 1460 and SACK permitted: 6 bytes, padded with zeros to 8.
    let options = h("020405b4 0402");
    golden(
        &h("01082263 0a070050 20010db8 00000000 00000000 00000001 020405b4 04020000"),
        &msg(vec![Tlv::Connect(Connect { remote, options })]),
    );
}

#[test]
fn golden_connect_option_ending_in_zero_byte_is_not_padding() {
    // MSS 1280 = 0x0500 ends in a zero byte but is a whole option.
    let remote = SocketAddr::from((Ipv4Addr::new(198, 51, 100, 7), 8080));
    golden(
        &h("01072263 0a061f90 00000000 00000000 0000ffff c6336407 02040500"),
        &msg(vec![Tlv::Connect(Connect { remote, options: h("02040500") })]),
    );
}

#[test]
fn golden_extended_tcp_header() {
    golden(
        &h("01042263 14030000 020405b4 01030307"),
        &msg(vec![Tlv::ExtendedTcpHeader { options: h("020405b4 01030307") }]),
    );
}

#[test]
fn golden_supported_tcp_extensions() {
    // MPTCP (30) and SACK permitted (4), zero-padded.
    golden(&h("01032263 15020000 1e040000"), &msg(vec![Tlv::SupportedTcpExtensions { kinds: vec![30, 4] }]));
}

#[test]
fn golden_cookie() {
    golden(&h("01032263 16020000 deadbeef"), &msg(vec![Tlv::Cookie(h("deadbeef"))]));
}

#[test]
fn golden_error_replies() {
    golden(&h("01022263 1e012000"), &Message::error_reply(ErrorCode::NotAuthorized));
    golden(&h("01022263 1e016100"), &Message::error_reply(ErrorCode::DestinationUnreachable));
    // Unsupported Version lists the versions we support in the value.
    golden(&h("01022263 1e010001"), &Message::error_reply(ErrorCode::UnsupportedVersion));
    golden(
        &h("01032263 1e020102 03000000"),
        &msg(vec![Tlv::Error { code: ErrorCode::MalformedMessage, value: h("0203000000") }]),
    );
    assert_eq!(Message::error_reply(ErrorCode::ResourceExceeded).error(), Some(ErrorCode::ResourceExceeded));
    // The ICMP code of Destination Unreachable, and the kinds of unsupported TCP options.
    golden(&h("01022263 1e016103"), &Message::unreachable_reply(3));
    golden(&h("01032263 1e022113 fe000000"), &Message::unsupported_options_reply(&[19, 254]));
}

#[test]
fn golden_echo_replies_keep_values_that_end_in_zero() {
    // Malformed Message: one zero byte, then the message as received (here a Connect TLV whose address
    // ends in zero bytes), so it keeps its alignment.
    let received = h("01062263 0a050050 00000000 00000000 00000000 00000000");
    let reply = Message::echo_reply(ErrorCode::MalformedMessage, &received);
    let wire = h("01082263 1e070100 01062263 0a050050 00000000 00000000 00000000 00000000");
    golden(&wire, &reply);
    assert_eq!(reply.error_tlv(), Some((ErrorCode::MalformedMessage, &wire[7..])));
    // Unsupported Message, echo of a 1-byte-short message: padded to the word.
    golden(&h("01032263 1e020200 01020000"), &Message::echo_reply(ErrorCode::UnsupportedMessage, &h("0102")));
    // A whole 1020-byte message is cut to what one reply can carry.
    let big = Message::echo_reply(ErrorCode::MalformedMessage, &[0xab; MAX_MESSAGE_LEN]);
    let bytes = big.to_bytes().unwrap();
    assert_eq!(bytes.len(), MAX_MESSAGE_LEN);
    assert!(bytes[8..].iter().all(|b| *b == 0xab));
}

#[test]
fn golden_supported_extensions_reply() {
    golden(&h("01032263 15020000 0304081e"), &Message::supported_extensions(&[3, 4, 8, 30]));
    for base in [0, 1, 2] {
        assert_eq!(Message::supported_extensions(&[30, base]).to_bytes(), Err(EncodeError::BaseOptionKind));
        let wire = [h("01032263 15020000 1e"), vec![base, 0, 0]].concat();
        if base != 0 {
            assert_eq!(err(&wire), ErrorCode::MalformedMessage, "kind {base} listed");
        }
    }
}

#[test]
fn golden_unknown_tlv_is_kept() {
    golden(&h("01022263 c801aabb"), &msg(vec![Tlv::Unknown { kind: 200, value: h("aabb") }]));
    golden(&h("01032263 02020102 03040506"), &msg(vec![Tlv::Unknown { kind: 2, value: h("0102 03040506") }]));
}

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const TS: u64 = 1_700_000_000;
const NONCE: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
/// Connect 192.0.2.10:443 + Auth(TS, NONCE, cpe "cpe-0001") with the MAC zeroed, laid out by hand.
const REQUEST_UNSIGNED: &str = "01182263 0a0501bb 00000000 00000000 0000ffff c000020a
    c0120000 00000000 6553f100 00010203 04050607 08090a0b 0c0d0e0f
    00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
    08637065 2d303030 31000000";
/// HMAC-SHA256(KEY, REQUEST_UNSIGNED), computed outside this crate (Python's hmac module).
const REQUEST_MAC: &str = "337e04c4e45f3d86ba72a4c4aaaa6d44f13788027e75c51d6bc2a25df8470a80";

#[test]
fn golden_signed_connect_auth_request() {
    let remote = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 10), 443));
    let signed = auth::signed_request(KEY, remote, "cpe-0001", TS, NONCE).unwrap();

    let unsigned = h(REQUEST_UNSIGNED);
    let mac = h(REQUEST_MAC);
    let mut expected = unsigned.clone();
    expected[24 + 28..24 + 60].copy_from_slice(&mac);
    assert_eq!(signed, expected);

    // And the hmac crate agrees with the externally computed value.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY).unwrap();
    m.update(&unsigned);
    assert_eq!(m.finalize().into_bytes()[..], mac[..]);

    let value = msg(vec![
        Tlv::Connect(Connect { remote, options: vec![] }),
        Tlv::Auth(Auth {
            timestamp: TS,
            nonce: NONCE,
            mac: mac.clone().try_into().unwrap(),
            cpe_id: "cpe-0001".into(),
        }),
    ]);
    golden(&signed, &value);
    assert_eq!(value.auth().unwrap().cpe_id, "cpe-0001");
    assert_eq!(value.connect().unwrap().remote, remote);
    auth::verify_mac(KEY, &signed).unwrap();
}

/// Hold + Auth(TS, NONCE, cpe "cpe-0001") with the MAC zeroed, laid out by hand.
const HOLD_UNSIGNED: &str = "01142263 c1010000
    c0120000 00000000 6553f100 00010203 04050607 08090a0b 0c0d0e0f
    00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
    08637065 2d303030 31000000";
/// HMAC-SHA256(KEY, HOLD_UNSIGNED), computed outside this crate (Python's hmac module).
const HOLD_MAC: &str = "7644dbe59fa13e633aee14ff38eeef31aa96d8868ad28c8fb497a8fdd10c8481";

#[test]
fn golden_signed_hold_request() {
    let signed = auth::signed_hold(KEY, "cpe-0001", TS, NONCE).unwrap();
    let mut expected = h(HOLD_UNSIGNED);
    expected[8 + 28..8 + 60].copy_from_slice(&h(HOLD_MAC));
    assert_eq!(signed, expected);
    let value = msg(vec![
        Tlv::Hold,
        Tlv::Auth(Auth {
            timestamp: TS,
            nonce: NONCE,
            mac: h(HOLD_MAC).try_into().unwrap(),
            cpe_id: "cpe-0001".into(),
        }),
    ]);
    golden(&signed, &value);
    assert!(value.hold() && value.connect().is_none());
    auth::verify_mac(KEY, &signed).unwrap();
}

#[test]
fn hold_tlv_is_one_word_and_ignores_its_unassigned_bits() {
    golden(&h("01022263 c1010000"), &msg(vec![Tlv::Hold]));
    assert_eq!(parse(&h("01022263 c101abcd")).unwrap().unwrap().0, msg(vec![Tlv::Hold]));
    assert_eq!(err(&h("01032263 c1020000 00000000")), ErrorCode::MalformedMessage);
    assert!(!Message::connect_request(SocketAddr::from((Ipv4Addr::LOCALHOST, 1))).hold());
}

#[test]
fn verify_mac_rejects_wrong_key_and_any_flipped_bit() {
    let remote = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 10), 443));
    let signed = auth::signed_request(KEY, remote, "cpe-0001", TS, NONCE).unwrap();
    assert_eq!(auth::verify_mac(b"another key", &signed), Err(AuthError::BadMac));
    for i in 4..signed.len() {
        let mut bad = signed.clone();
        bad[i] ^= 0x01;
        // Either the codec rejects it or the MAC does; never accepted.
        assert!(auth::verify_mac(KEY, &bad).is_err(), "flipped byte {i} accepted");
    }
}

#[test]
fn sign_and_verify_need_exactly_one_message_ending_in_auth() {
    let remote = SocketAddr::from((Ipv6Addr::LOCALHOST, 80));
    let mut plain = Message::connect_request(remote).to_bytes().unwrap();
    assert_eq!(auth::sign(KEY, &mut plain), Err(AuthError::MissingAuth));
    let signed = auth::signed_request(KEY, remote, "x", TS, NONCE).unwrap();
    assert_eq!(auth::verify_mac(KEY, &signed[..signed.len() - 1]), Err(AuthError::Incomplete));
    let mut with_data = signed.clone();
    with_data.extend_from_slice(b"GET /");
    assert_eq!(auth::verify_mac(KEY, &with_data), Err(AuthError::TrailingBytes));
    assert!(matches!(auth::signed_request(KEY, remote, "", TS, NONCE), Err(AuthError::Encode(_))));
    assert!(matches!(auth::signed_request(KEY, remote, &"a".repeat(65), TS, NONCE), Err(AuthError::Encode(_))));
    // 64 bytes (multi-byte UTF-8) is fine.
    let long_id = "é".repeat(32);
    let signed = auth::signed_request(KEY, remote, &long_id, TS, NONCE).unwrap();
    let Decoded::Done { message, .. } = decode(&signed) else { panic!() };
    assert_eq!(message.auth().unwrap().cpe_id, long_id);
    auth::verify_mac(KEY, &signed).unwrap();
}

#[test]
fn decode_byte_by_byte_needs_more_until_the_last_byte() {
    let remote = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 10), 443));
    let signed = auth::signed_request(KEY, remote, "cpe-0001", TS, NONCE).unwrap();
    for n in 0..signed.len() {
        assert_eq!(decode(&signed[..n]), Decoded::NeedMore, "prefix of {n} bytes");
    }
    assert!(matches!(decode(&signed), Decoded::Done { consumed, .. } if consumed == signed.len()));
}

#[test]
fn client_data_after_the_message_is_not_consumed() {
    let mut bytes = Message::connect_request(SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 80))).to_bytes().unwrap();
    let len = bytes.len();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert!(matches!(decode(&bytes), Decoded::Done { consumed, .. } if consumed == len));
    // The same for the bare success reply followed by server bytes.
    assert!(matches!(decode(&h("01012263 48545450")), Decoded::Done { consumed: 4, .. }));
}

#[test]
fn version_error_as_soon_as_the_first_byte_arrives() {
    assert_eq!(err(&[2]), ErrorCode::UnsupportedVersion);
    assert_eq!(err(&[0]), ErrorCode::UnsupportedVersion);
    assert_eq!(err(&h("02012263")), ErrorCode::UnsupportedVersion);
    assert_eq!(decode(&[]), Decoded::NeedMore);
    assert_eq!(decode(&[1]), Decoded::NeedMore);
    assert_eq!(decode(&[1, 1, 0x22]), Decoded::NeedMore);
}

#[test]
fn malformed_header_and_tlv_framing() {
    use ErrorCode::MalformedMessage as M;
    assert_eq!(err(&h("01012264")), M, "bad magic");
    assert_eq!(err(&h("010123")), M, "bad magic, first byte");
    assert_eq!(err(&h("0100")), M, "total length 0");
    assert_eq!(err(&h("01022263 c8000000")), M, "TLV length 0");
    assert_eq!(err(&h("01022263 c8020000")), M, "TLV overruns the total length");
    assert_eq!(err(&h("01022263 01020000")), M, "Info of 2 words");
    assert_eq!(err(&h("01052263 0a040050 00000000 00000000 00000000")), M, "Connect of 4 words");
    // Connect with a NOP, with a length-1 option, with an option running past the TLV, with junk padding.
    for opts in ["01000000", "02010000", "020805b4", "02040500 00010000"] {
        let mut b = h("01002263 0a000050 00000000 00000000 0000ffff 7f000001");
        b.extend(h(opts));
        b[1] = (b.len() / 4) as u8;
        b[5] = ((b.len() - 4) / 4) as u8;
        assert_eq!(err(&b), M, "options {opts}");
    }
    assert_eq!(err(&h("01032263 15020000 1e00041e")), M, "kind 0 inside Supported TCP Extensions");
    assert_eq!(err(&h("01022263 00010000")), M, "TLV type 0 is reserved");
}

#[test]
fn malformed_auth_tlv() {
    use ErrorCode::MalformedMessage as M;
    let signed =
        auth::signed_request(KEY, SocketAddr::from((Ipv4Addr::new(192, 0, 2, 10), 443)), "cpe-0001", TS, NONCE)
            .unwrap();
    let auth_at = 24;
    let id_len_at = auth_at + 60;
    for bad_len in [0u8, 12, 65, 255] {
        let mut b = signed.clone();
        b[id_len_at] = bad_len;
        assert_eq!(err(&b), M, "id length {bad_len}");
    }
    let mut b = signed.clone();
    b[id_len_at + 1] = 0xff;
    assert_eq!(err(&b), M, "non-UTF-8 id");
    let mut b = signed.clone();
    *b.last_mut().unwrap() = 1;
    assert_eq!(err(&b), M, "non-zero padding");
    // Auth followed by another TLV.
    let mut b = signed.clone();
    b.extend(h("01010000"));
    b[1] += 1;
    assert_eq!(err(&b), M, "Auth not last");
    // The encoder refuses the same.
    let a = Tlv::Auth(Auth { timestamp: 0, nonce: [0; 16], mac: [0; 32], cpe_id: "a".into() });
    assert_eq!(msg(vec![a.clone(), Tlv::Info]).to_bytes(), Err(EncodeError::AuthNotLast));
}

/// HMAC-SHA256(KEY, "hag time" || NONCE || 1_700_000_000_123 as u64 big-endian), computed outside this crate
/// (Python's hmac module).
const TIME_MAC: &str = "316b67baec2ce621d8d801f60d0b6aafc8996c9de028e9e061dcd0bc6f1f7f76";

#[test]
fn golden_time_tlv_in_an_error_32_reply() {
    let time = auth::signed_time(KEY, &NONCE, 1_700_000_000_123);
    assert_eq!(time.mac.to_vec(), h(TIME_MAC));
    let mut reply = Message::error_reply(ErrorCode::NotAuthorized);
    reply.tlvs.push(Tlv::Time(time.clone()));
    golden(&[h("010d2263 1e012000 c20b0000 0000018b cfe5687b"), h(TIME_MAC)].concat(), &reply);
    assert_eq!(reply.time(), Some(&time));
    assert_eq!(auth::verify_time(KEY, &NONCE, &time), Ok(1_700_000_000_123));
    // Another request's nonce, another key, or another time: refused.
    assert_eq!(auth::verify_time(KEY, &[9; 16], &time), Err(AuthError::BadMac));
    assert_eq!(auth::verify_time(b"another key", &NONCE, &time), Err(AuthError::BadMac));
    let later = Time { unix_ms: time.unix_ms + 3_600_000, ..time };
    assert_eq!(auth::verify_time(KEY, &NONCE, &later), Err(AuthError::BadMac));
    // Its length is fixed.
    assert_eq!(err(&h("01032263 c2020000 00000000")), ErrorCode::MalformedMessage);
}

#[test]
fn encoder_limits() {
    let big = Tlv::Cookie(vec![7; 1020]);
    assert!(matches!(msg(vec![big]).to_bytes(), Err(EncodeError::TlvTooLong { kind: 22, .. })));
    let fits = Tlv::Cookie(vec![7; 1012]); // 1016 bytes of TLV + 4 of header = 1020
    assert_eq!(msg(vec![fits.clone()]).to_bytes().unwrap().len(), MAX_MESSAGE_LEN);
    let mut out = vec![9];
    assert!(matches!(msg(vec![fits, Tlv::Info]).emit(&mut out), Err(EncodeError::MessageTooLong { len: 1024 })));
    assert_eq!(out, [9], "nothing appended on error");
    assert_eq!(msg(vec![Tlv::Cookie(vec![1, 2, 3])]).to_bytes(), Err(EncodeError::Unaligned { kind: 22 }));
    assert_eq!(
        msg(vec![Tlv::Error { code: ErrorCode::MalformedMessage, value: vec![1, 0] }]).to_bytes(),
        Err(EncodeError::Unaligned { kind: 30 })
    );
    assert_eq!(
        msg(vec![Tlv::Unknown { kind: 10, value: vec![0, 0] }]).to_bytes(),
        Err(EncodeError::KnownKindAsUnknown { kind: 10 })
    );
}

#[test]
fn error_codes_round_trip() {
    for c in 0..=255u8 {
        assert_eq!(ErrorCode::from_code(c).code(), c);
    }
    assert_eq!(ErrorCode::from_code(97), ErrorCode::DestinationUnreachable);
    assert_eq!(ErrorCode::from_code(200), ErrorCode::Unknown(200));
}

// ---- replay window ----

fn auth_at(timestamp: u64, nonce_byte: u8) -> Auth {
    Auth { timestamp, nonce: [nonce_byte; 16], mac: [0; 32], cpe_id: "cpe".into() }
}

#[test]
fn replay_window_skew_both_directions() {
    let mut w = ReplayWindow::new(30, 100);
    let now = 1_000_000;
    assert!(matches!(w.check(now, &auth_at(now - 31, 1)), Err(AuthError::TimestampTooOld { .. })));
    assert!(matches!(w.check(now, &auth_at(now + 31, 2)), Err(AuthError::TimestampInFuture { .. })));
    assert_eq!(w.check(now, &auth_at(now - 30, 3)), Ok(()));
    assert_eq!(w.check(now, &auth_at(now + 30, 4)), Ok(()));
    assert_eq!(w.check(now, &auth_at(now, 5)), Ok(()));
    assert_eq!(w.len(), 3, "rejected timestamps are not remembered");
    // Near the ends of the u64 range nothing overflows.
    let mut w = ReplayWindow::new(u64::MAX, 10);
    assert_eq!(w.check(5, &auth_at(u64::MAX, 1)), Ok(()));
    assert_eq!(w.check(u64::MAX, &auth_at(0, 2)), Ok(()));
}

#[test]
fn replay_window_rejects_a_replayed_nonce() {
    let mut w = ReplayWindow::new(30, 100);
    assert_eq!(w.check(1000, &auth_at(1000, 7)), Ok(()));
    assert_eq!(w.check(1010, &auth_at(1000, 7)), Err(AuthError::Replay));
    // Same nonce with another timestamp (a forged one would fail the MAC, but the window alone still refuses).
    assert_eq!(w.check(1010, &auth_at(1005, 7)), Err(AuthError::Replay));
    assert_eq!(w.check(1010, &auth_at(1005, 8)), Ok(()));
}

#[test]
fn replay_window_entries_expire_with_their_timestamp() {
    let mut w = ReplayWindow::new(30, 100);
    assert_eq!(w.check(1000, &auth_at(1000, 7)), Ok(()));
    assert_eq!(w.check(1030, &auth_at(1000, 7)), Err(AuthError::Replay), "still inside the window");
    // At 1031 the old request fails the skew check by itself, and its nonce is forgotten.
    assert!(matches!(w.check(1031, &auth_at(1000, 7)), Err(AuthError::TimestampTooOld { .. })));
    assert_eq!(w.check(1031, &auth_at(1031, 9)), Ok(()));
    assert_eq!(w.len(), 1);
    // A new request that happens to reuse the nonce is then accepted.
    assert_eq!(w.check(1031, &auth_at(1031, 7)), Ok(()));
}

#[test]
fn replay_window_is_bounded_and_says_so() {
    let mut w = ReplayWindow::new(30, 3);
    for n in 0..3 {
        assert_eq!(w.check(1000, &auth_at(1000 + u64::from(n), n)), Ok(()));
    }
    assert_eq!(w.check(1000, &auth_at(1000, 50)), Err(AuthError::ReplayWindowFull { max_entries: 3 }));
    assert_eq!(w.len(), 3);
    assert_eq!(AuthError::ReplayWindowFull { max_entries: 3 }.code(), ErrorCode::ResourceExceeded);
    // A replay is still reported as a replay while full.
    assert_eq!(w.check(1000, &auth_at(1000, 1)), Err(AuthError::Replay));
    // Once the oldest entry (timestamp 1000) expires there is room again.
    assert_eq!(w.check(1031, &auth_at(1031, 50)), Ok(()));
    assert_eq!(w.len(), 3);
}

#[test]
fn random_nonces_differ() {
    assert_ne!(auth::random_nonce().unwrap(), auth::random_nonce().unwrap());
}

// ---- properties ----

fn arb_socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::from((Ipv4Addr::from(a), p))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_filter("not v4-mapped", |(a, _)| Ipv6Addr::from(*a).to_ipv4_mapped().is_none())
            .prop_map(|(a, p)| SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(a), p, 0, 0))),
    ]
}

fn arb_tcp_options() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((2u8..=255, prop::collection::vec(any::<u8>(), 0..8)), 0..4).prop_map(|opts| {
        let mut out = Vec::new();
        for (kind, data) in opts {
            out.push(kind);
            out.push(data.len() as u8 + 2);
            out.extend(data);
        }
        out
    })
}

fn words(max_words: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<[u8; 4]>(), 0..max_words).prop_map(|w| w.concat())
}

fn arb_tlv() -> impl Strategy<Value = Tlv> {
    prop_oneof![
        Just(Tlv::Info),
        Just(Tlv::Hold),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(unix_ms, mac)| Tlv::Time(Time { unix_ms, mac })),
        (arb_socket_addr(), arb_tcp_options()).prop_map(|(remote, options)| Tlv::Connect(Connect { remote, options })),
        words(10).prop_map(|options| Tlv::ExtendedTcpHeader { options }),
        prop::collection::vec(3u8..=255, 0..12).prop_map(|kinds| Tlv::SupportedTcpExtensions { kinds }),
        words(10).prop_map(Tlv::Cookie),
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(c, value)| Tlv::error(ErrorCode::from_code(c), &value)),
        (any::<u8>().prop_filter("unknown", |k| *k != 0 && !tlv_type::is_known(*k)), words(10)).prop_map(
            |(kind, w)| {
                let mut value = vec![0xa5, 0x5a];
                value.extend(w);
                Tlv::Unknown { kind, value }
            }
        ),
    ]
}

fn arb_auth() -> impl Strategy<Value = Auth> {
    (any::<u64>(), any::<[u8; 16]>(), any::<[u8; 32]>(), "[a-zA-Z0-9é_.-]{1,32}")
        .prop_map(|(timestamp, nonce, mac, cpe_id)| Auth { timestamp, nonce, mac, cpe_id })
}

fn arb_message() -> impl Strategy<Value = Message> {
    (prop::collection::vec(arb_tlv(), 0..6), prop::option::of(arb_auth())).prop_map(|(mut tlvs, auth)| {
        tlvs.extend(auth.map(Tlv::Auth));
        Message { tlvs }
    })
}

proptest! {
    #[test]
    fn encode_decode_round_trip(m in arb_message(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut bytes = m.to_bytes().unwrap();
        prop_assert_eq!(bytes.len(), m.buffer_len());
        let len = bytes.len();
        for n in 0..len {
            prop_assert_eq!(decode(&bytes[..n]), Decoded::NeedMore);
        }
        bytes.extend_from_slice(&tail);
        prop_assert_eq!(decode(&bytes), Decoded::Done { message: m, consumed: len });
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_decoded_values_re_encode(bytes in prop::collection::vec(any::<u8>(), 0..1100)) {
        check_decoded_is_stable(&bytes);
    }

    #[test]
    fn plausible_headers_never_panic(words in 1u8..=255, body in prop::collection::vec(any::<u8>(), 0..1100)) {
        let mut bytes = vec![VERSION, words, 0x22, 0x63];
        bytes.extend(body);
        check_decoded_is_stable(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        m in arb_message(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = m.to_bytes().unwrap();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        check_decoded_is_stable(&bytes);
    }

    #[test]
    fn signed_requests_verify_and_pass_the_window(
        key in prop::collection::vec(any::<u8>(), 0..80), remote in arb_socket_addr(),
        id in "[a-z0-9-]{1,64}", ts in 0u64..u64::MAX / 2, nonce in any::<[u8; 16]>(),
    ) {
        let signed = auth::signed_request(&key, remote, &id, ts, nonce).unwrap();
        prop_assert_eq!(auth::verify_mac(&key, &signed), Ok(()));
        let Decoded::Done { message, .. } = decode(&signed) else { panic!("signed request does not decode") };
        let mut w = ReplayWindow::new(30, 10);
        prop_assert_eq!(w.check(ts, message.auth().unwrap()), Ok(()));
        prop_assert_eq!(w.check(ts, message.auth().unwrap()), Err(AuthError::Replay));
    }
}

/// What the fuzz target checks too: no panic, `consumed` in range, and anything decoded re-encodes to bytes
/// that decode to the same value.
fn check_decoded_is_stable(bytes: &[u8]) {
    if let Decoded::Done { message, consumed } = decode(bytes) {
        assert!(consumed <= bytes.len() && consumed <= MAX_MESSAGE_LEN);
        let again = message.to_bytes().expect("decoded messages are encodable");
        // Extra padding words are accepted on input but not produced, so the length may shrink.
        assert!(again.len() <= consumed);
        assert_eq!(decode(&again), Decoded::Done { message, consumed: again.len() });
    }
    let _ = auth::verify_mac(b"k", bytes);
}
