//! The subflow evidence on synthetic `sock_diag` samples: the health fallback's verdicts and the path
//! controller's readings.

use super::*;
use HealthState::{Down, Unknown, Up};

fn tcp(state: u8, quiet_ms: u32) -> SubflowTcp {
    SubflowTcp { state, rtt_us: 20_000, last_data_recv_ms: quiet_ms, last_ack_recv_ms: quiet_ms, ..Default::default() }
}
fn est(uplink: usize, conn: u32, quiet_ms: u32) -> Sample {
    Sample { uplink, conn, tcp: tcp(SubflowTcp::ESTABLISHED, quiet_ms) }
}
fn input(probe: HealthState) -> Input {
    Input { probed: true, probe, carrier: true }
}
const TH: Thresholds = Thresholds {
    fresh: Duration::from_millis(1000),
    silent: Duration::from_millis(800),
    sibling: Duration::from_millis(200),
    idle: Duration::from_millis(3000),
};

#[test]
fn receiving_subflows_are_alive_and_idle_ones_tell_nothing() {
    let e = judge(&[est(0, 1, 10), est(1, 2, 5000), est(2, 3, 600)], 4, &TH);
    assert_eq!(e, vec![Evidence::Receiving, Evidence::Silent, Evidence::Alive, Evidence::Silent]);
}

#[test]
fn a_subflow_silent_beside_a_receiving_sibling_is_dead() {
    // DSL cut mid-download: its subflow has heard nothing for 900 ms, LTE's of the same connection 5 ms ago.
    let e = judge(&[est(0, 7, 900), est(1, 7, 5)], 2, &TH);
    assert_eq!(e, vec![Evidence::Dead, Evidence::Receiving]);
    // Beside a sibling of another connection it is not dead (the scheduler may simply not use it), and
    // 900 ms is still recent enough to count as alive.
    let e = judge(&[est(0, 7, 900), est(1, 8, 5)], 2, &TH);
    assert_eq!(e, vec![Evidence::Alive, Evidence::Receiving]);
    // Silent for longer than `idle`: a subflow the scheduler leaves unused, not a cut.
    let e = judge(&[est(0, 7, 4000), est(1, 7, 5)], 2, &TH);
    assert_eq!(e, vec![Evidence::Silent, Evidence::Receiving]);
    // A long-RTT subflow gets four RTTs before it counts as silent.
    let mut slow = est(0, 7, 1100);
    slow.tcp.rtt_us = 300_000;
    assert_eq!(judge(&[slow, est(1, 7, 5)], 2, &TH)[0], Evidence::Silent);
    slow.tcp.last_data_recv_ms = 1300;
    slow.tcp.last_ack_recv_ms = 1300;
    assert_eq!(judge(&[slow, est(1, 7, 5)], 2, &TH)[0], Evidence::Dead);
}

#[test]
fn unanswered_syns_and_data_retransmissions_are_dead_unless_something_arrived() {
    let mut syn = est(0, 0, 0);
    syn.tcp.state = SubflowTcp::SYN_SENT;
    syn.tcp.retransmits = 1;
    assert_eq!(judge(&[syn], 1, &TH), vec![Evidence::Dead]);
    let mut upload = est(0, 3, 700);
    upload.tcp.unacked = 10;
    upload.tcp.backoff = 2;
    assert_eq!(judge(&[upload], 1, &TH), vec![Evidence::Dead]);
    // Another connection on the same uplink received 50 ms ago: the path works.
    assert_eq!(judge(&[upload, est(0, 4, 50)], 1, &TH), vec![Evidence::Receiving]);
}

#[test]
fn probes_rule_until_every_uplink_is_unanswered() {
    let t0 = Instant::now();
    let mut f = Fallback::new(2);
    let v = f.update(t0, &[input(Up), input(Down)], true, Some(vec![Evidence::Alive, Evidence::Alive]));
    assert!(!f.active());
    assert_eq!((v[0].state, v[1].state), (Up, Down), "a probed-down uplink stays down while another answers");
    // Both unanswered, but the probes did answer before and no subflow carries data: a real outage.
    let v = f.update(t0, &[input(Down), input(Down)], true, Some(vec![Evidence::Silent; 2]));
    assert!(!f.active());
    assert_eq!((v[0].state, v[1].state), (Down, Down));
}

#[test]
fn filtered_probes_from_the_start_keep_every_uplink_usable() {
    let t0 = Instant::now();
    let mut f = Fallback::new(2);
    assert!(f.wants_samples(&[input(Down), input(Down)]));
    let v = f.update(t0, &[input(Down), input(Down)], false, None);
    assert!(f.active());
    assert_eq!((v[0].state, v[1].state), (Unknown, Unknown));
    let v = f.update(t0, &[input(Down), input(Down)], false, Some(vec![Evidence::Alive, Evidence::Silent]));
    assert_eq!((v[0].state, v[1].state), (Up, Unknown));
    // A probe answered again: that uplink is back on its probes; the other stays on its subflows until one
    // of its own probes is answered (no drop of its endpoint in between).
    let v = f.update(t0, &[input(Up), input(Down)], true, None);
    assert_eq!((v[0].from_subflows, v[1].from_subflows), (false, true));
    assert_eq!((v[0].state, v[1].state), (Up, Unknown));
    let v = f.update(t0, &[input(Up), input(Up)], true, None);
    assert!(!f.active());
    assert_eq!((v[0].state, v[1].state), (Up, Up));
}

#[test]
fn probes_that_die_while_the_subflows_still_receive_hand_over_to_the_subflows() {
    let t0 = Instant::now();
    let mut f = Fallback::new(2);
    f.update(t0, &[input(Up), input(Up)], true, None);
    assert!(!f.wants_samples(&[input(Up), input(Up)]), "nothing to sample while every probe is answered");
    // UDP filtered in the middle of a download: DSL's probes give up while its subflow received 5 ms ago.
    assert!(f.wants_samples(&[input(Down), input(Up)]));
    let v = f.update(t0, &[input(Down), input(Up)], true, Some(vec![Evidence::Receiving, Evidence::Receiving]));
    assert_eq!(v[0], Verdict { state: Up, from_subflows: true, trial: false });
    assert_eq!(v[1], Verdict { state: Up, from_subflows: false, trial: false });
    // A real cut: the subflow went quiet with the probes (600 ms and more): the probes' Down stands.
    let mut f = Fallback::new(2);
    let v = f.update(t0, &[input(Down), input(Up)], true, Some(vec![Evidence::Alive, Evidence::Receiving]));
    assert_eq!(v[0], Verdict { state: Down, from_subflows: false, trial: false });
}

#[test]
fn the_first_unanswered_uplink_does_not_lose_its_endpoint_while_the_others_wait_for_their_verdict() {
    let t0 = Instant::now();
    let mut f = Fallback::new(2);
    let v = f.update(t0, &[input(Down), input(Unknown)], false, None);
    assert!(f.active());
    assert_eq!((v[0].state, v[1].state), (Unknown, Unknown));
}

#[test]
fn probes_lost_later_while_subflows_carry_data_switch_to_subflows() {
    let t0 = Instant::now();
    let mut f = Fallback::new(2);
    let v = f.update(t0, &[input(Down), input(Down)], true, Some(vec![Evidence::Alive, Evidence::Silent]));
    assert!(f.active());
    assert_eq!((v[0].state, v[1].state), (Up, Unknown));
}

#[test]
fn a_silent_cut_goes_down_holds_then_tries_again_with_a_longer_hold() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut f = Fallback::new(2);
    let both = [input(Down), input(Down)];
    f.update(t0, &both, false, Some(vec![Evidence::Alive, Evidence::Alive]));
    let v = f.update(t0, &both, false, Some(vec![Evidence::Dead, Evidence::Alive]));
    assert_eq!((v[0], v[1].state), (Verdict { state: Down, from_subflows: true, trial: false }, Up));
    // Its subflows are gone with the endpoint: silence keeps it down for the hold.
    let v = f.update(t0 + s(1), &both, false, Some(vec![Evidence::Silent, Evidence::Alive]));
    assert_eq!(v[0].state, Down);
    let v = f.update(t0 + HOLD_MIN, &both, false, Some(vec![Evidence::Silent, Evidence::Alive]));
    assert_eq!(v[0], Verdict { state: Unknown, from_subflows: true, trial: true });
    // The trial's joins fail: down for twice the hold.
    let t1 = t0 + s(3);
    let v = f.update(t1, &both, false, Some(vec![Evidence::Dead, Evidence::Alive]));
    assert_eq!(v[0].state, Down);
    let v = f.update(t1 + HOLD_MIN, &both, false, Some(vec![Evidence::Silent, Evidence::Alive]));
    assert_eq!(v[0].state, Down, "hold doubled");
    let v = f.update(t1 + HOLD_MIN * 2, &both, false, Some(vec![Evidence::Silent, Evidence::Alive]));
    assert_eq!(v[0], Verdict { state: Unknown, from_subflows: true, trial: true });
    // The link is back: data on its subflows makes it Up and resets the hold.
    let v = f.update(t1 + s(5), &both, false, Some(vec![Evidence::Alive, Evidence::Alive]));
    assert_eq!(v[0], Verdict { state: Up, from_subflows: true, trial: false });
}

#[test]
fn carrier_loss_is_down_in_subflow_mode_too() {
    let t0 = Instant::now();
    let mut f = Fallback::new(2);
    f.update(t0, &[input(Down), input(Down)], false, None);
    let no_carrier = Input { probed: true, probe: Down, carrier: false };
    let v = f.update(t0, &[no_carrier, input(Down)], false, None);
    assert!(f.active());
    assert_eq!(v[0].state, Down);
    let v = f.update(t0, &[input(Down), input(Down)], false, None);
    assert_eq!(v[0], Verdict { state: Unknown, from_subflows: true, trial: true });
}

#[test]
fn sending_round_trips_come_from_loaded_freshly_acknowledged_subflows() {
    let sub = |uplink: usize, rtt_ms: u32, unacked: u32, ack_ms: u32| Sample {
        uplink,
        conn: 1,
        tcp: SubflowTcp {
            state: SubflowTcp::ESTABLISHED,
            rtt_us: rtt_ms * 1000,
            unacked,
            last_ack_recv_ms: ack_ms,
            ..Default::default()
        },
    };
    let samples = [
        // Uplink 0: two uploads, the larger round trip counts; an idle subflow's stale one does not.
        sub(0, 40, 120, 2),
        sub(0, 55, 30, 10),
        sub(0, 700, 0, 5000),
        // Uplink 1: a request in flight (too few segments), and an upload whose ACKs stopped (a cut, the
        // health verdict's business).
        sub(1, 300, 2, 5),
        sub(1, 900, 200, 600),
        // Uplink 2: a download (nothing of ours in flight).
        sub(2, 60, 0, 3),
    ];
    let mut syn = sub(0, 5000, 50, 0);
    syn.tcp.state = SubflowTcp::SYN_SENT;
    let mut all = samples.to_vec();
    all.push(syn);
    assert_eq!(sending_rtts(&all, 4), vec![Some(Duration::from_millis(55)), None, None, None]);
}

#[test]
fn an_idle_subflow_waits_for_its_connections_carrying_sibling() {
    let sub = |uplink: usize, conn: u32, unacked: u32, data_ms: u32, ack_ms: u32| Sample {
        uplink,
        conn,
        tcp: SubflowTcp {
            state: SubflowTcp::ESTABLISHED,
            rtt_us: 25_000,
            unacked,
            last_data_recv_ms: data_ms,
            last_ack_recv_ms: ack_ms,
            ..Default::default()
        },
    };
    let samples = [
        // Connection 1, an upload: LTE (1) in flight and acknowledged, DSL (0) empty and quiet for 300 ms.
        sub(1, 1, 40, 5000, 30),
        sub(0, 1, 0, 5000, 300),
        // Connection 2, a download: LTE receives, DSL heard nothing for 250 ms.
        sub(1, 2, 0, 10, 10),
        sub(0, 2, 0, 250, 250),
        // Connection 3: DSL quiet only 100 ms (between two bursts), or still sending.
        sub(1, 3, 0, 10, 10),
        sub(0, 3, 0, 100, 100),
        sub(2, 3, 3, 900, 900),
    ];
    assert_eq!(waiting_for(&samples[..2], 3), vec![0, 1, 0]);
    assert_eq!(waiting_for(&samples[2..4], 3), vec![0, 1, 0]);
    assert_eq!(waiting_for(&samples[4..], 3), vec![0, 0, 0], "short quiet; something in flight");
    // Both connections at once; and nothing waits for an idle connection.
    assert_eq!(waiting_for(&samples, 3), vec![0, 1, 0]);
    assert_eq!(waiting_for(&[sub(1, 4, 0, 900, 900), sub(0, 4, 0, 900, 900)], 2), vec![0, 0]);
    // A subflow with a long round trip waits only after four of them.
    let mut slow = sub(0, 1, 0, 5000, 300);
    slow.tcp.rtt_us = 100_000;
    assert_eq!(waiting_for(&[sub(1, 1, 40, 5000, 30), slow], 2), vec![0, 0]);
}

#[test]
fn subflows_hcpe_closed_while_they_carried_are_not_silence() {
    use Evidence::{Dead, Receiving, Silent};
    let judged = vec![Silent, Silent, Dead];
    assert_eq!(with_own_closures(judged.clone(), &[true, false, true]), vec![Receiving, Silent, Dead]);
    assert_eq!(with_own_closures(judged.clone(), &[]), judged);
}
