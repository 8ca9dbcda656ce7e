use std::collections::BTreeMap;

use bytesize::ByteSize;
use time::{Date, Month, OffsetDateTime};

use super::*;
use crate::config::tests::uplinks::{BASE, parse_in_dir};
use crate::uplink::settings::{QuotaAction, QuotaFile};
use proptest::prelude::*;

fn unix(y: i32, m: u8, d: u8, h: u8, min: u8, sec: u8) -> u64 {
    let date = Date::from_calendar_date(y, Month::try_from(m).unwrap(), d).unwrap();
    date.with_hms(h, min, sec).unwrap().assume_utc().unix_timestamp() as u64
}

#[test]
fn period_start_table() {
    let cases = [
        // (now, reset_day, expected start)
        (unix(2026, 3, 15, 12, 0, 0), 1, unix(2026, 3, 1, 0, 0, 0)),
        (unix(2026, 3, 1, 0, 0, 0), 1, unix(2026, 3, 1, 0, 0, 0)),
        (unix(2026, 2, 28, 23, 59, 59), 1, unix(2026, 2, 1, 0, 0, 0)),
        (unix(2026, 3, 14, 23, 59, 59), 15, unix(2026, 2, 15, 0, 0, 0)),
        (unix(2026, 3, 15, 0, 0, 0), 15, unix(2026, 3, 15, 0, 0, 0)),
        (unix(2026, 1, 10, 8, 0, 0), 15, unix(2025, 12, 15, 0, 0, 0)),
        (unix(2026, 3, 1, 0, 0, 0), 28, unix(2026, 2, 28, 0, 0, 0)),
        (unix(2024, 2, 29, 12, 0, 0), 28, unix(2024, 2, 28, 0, 0, 0)),
        (unix(2024, 3, 27, 12, 0, 0), 28, unix(2024, 2, 28, 0, 0, 0)),
    ];
    for (now, day, want) in cases {
        assert_eq!(period_start(now, day), want, "now={now} reset_day={day}");
    }
}

#[test]
fn next_period_table() {
    assert_eq!(next_period_start(unix(2025, 12, 15, 0, 0, 0), 15), unix(2026, 1, 15, 0, 0, 0));
    assert_eq!(next_period_start(unix(2026, 1, 28, 0, 0, 0), 28), unix(2026, 2, 28, 0, 0, 0));
    assert_eq!(next_period_start(unix(2026, 2, 1, 0, 0, 0), 1), unix(2026, 3, 1, 0, 0, 0));
}

proptest! {
    // From 1970-02-01: the first month's period would start before the epoch (a router with an unset
    // clock gets period 0 there, and periods only move forward once the clock is right).
    #[test]
    fn every_instant_lies_in_exactly_one_monthly_period(now in 2_678_400u64..4_102_444_800, day in 1u8..=28) {
        let start = period_start(now, day);
        let next = next_period_start(start, day);
        prop_assert!(start <= now && now < next, "{start} <= {now} < {next}");
        prop_assert_eq!(period_start(start, day), start);
        prop_assert_eq!(period_start(next - 1, day), start);
        prop_assert_eq!(period_start(next, day), next);
        let len_days = (next - start) / 86_400;
        prop_assert!((28..=31).contains(&len_days), "period of {len_days} days");
        prop_assert_eq!((next - start) % 86_400, 0);
        let d = OffsetDateTime::from_unix_timestamp(start as i64).unwrap();
        prop_assert_eq!((d.day(), d.hour(), d.minute(), d.second()), (day, 0, 0, 0));
    }
}

fn r(ifindex: u32, rx: u64, tx: u64) -> Option<Reading> {
    Some(Reading { ifindex, rx_bytes: rx, tx_bytes: tx })
}

const T0: u64 = 1_775_000_000_000; // 2026-03-31 (ms)
const S: Duration = Duration::from_secs(1);

fn quota(limit: u64, action: QuotaAction) -> Option<QuotaFile> {
    Some(QuotaFile { limit: ByteSize(limit), reset_day: 1, action })
}

#[test]
fn counts_deltas_from_the_first_reading_and_survives_counter_resets() {
    let mut a = Account::new(Totals { rx_bytes: 500, tx_bytes: 50, ..Default::default() }, None);
    a.observe(r(7, 1_000_000, 9_000), T0, S); // baseline: bytes before the start are not ours
    assert_eq!((a.totals.rx_bytes, a.totals.tx_bytes), (500, 50));
    a.observe(r(7, 1_001_000, 9_100), T0 + 1000, S);
    assert_eq!((a.totals.rx_bytes, a.totals.tx_bytes), (1_500, 150));
    // Counter went down (driver reload): the new value is new traffic.
    a.observe(r(7, 300, 9_200), T0 + 2000, S);
    assert_eq!((a.totals.rx_bytes, a.totals.tx_bytes), (1_800, 250));
    // Interface gone for a while: nothing counted, the last reading is kept.
    a.observe(None, T0 + 3000, S);
    assert_eq!((a.totals.rx_bytes, a.totals.tx_bytes), (1_800, 250));
    // Recreated with another index and counters already above the old ones: all of it is new.
    a.observe(r(9, 5_000, 10_000), T0 + 4000, S);
    assert_eq!((a.totals.rx_bytes, a.totals.tx_bytes), (6_800, 10_250));
    assert_eq!(a.totals.period_bytes, (6_800 - 500) + (10_250 - 50), "everything counted since the start");
    assert_eq!(counter_delta(10, 4), 4);
    assert_eq!(counter_delta(4, 10), 6);
}

#[test]
fn rates_and_history_of_300_samples() {
    let mut a = Account::new(Totals::default(), None);
    a.observe(r(1, 0, 0), T0, S);
    a.observe(r(1, 125_000, 250_000), T0 + 1000, S);
    let st = a.status("lte");
    assert_eq!((st.rx_bps, st.tx_bps), (1_000_000, 2_000_000));
    a.observe(r(1, 250_000, 250_000), T0 + 1500, Duration::from_millis(500));
    assert_eq!(a.status("lte").rx_bps, 2_000_000, "bits over the time the reading covers");
    for i in 0..400u64 {
        a.observe(r(1, 250_000, 250_000), T0 + 2000 + i * 1000, S);
    }
    let st = a.status("lte");
    assert_eq!(st.history.len(), HISTORY_LEN);
    assert_eq!(st.history.last().unwrap().t_unix_ms, T0 + 2000 + 399 * 1000);
    assert_eq!(st.history.first().unwrap().t_unix_ms, T0 + 2000 + 100 * 1000);
    assert_eq!((st.rx_bps, st.tx_bps), (0, 0));
}

#[test]
fn quota_is_crossed_once_per_period_and_cleared_by_the_next_period() {
    let mut a = Account::new(Totals::default(), quota(10_000, QuotaAction::Backup));
    assert_eq!(a.observe(r(1, 0, 0), T0, S), None);
    assert_eq!(a.observe(r(1, 6_000, 0), T0 + 1000, S), None);
    assert_eq!(
        a.observe(r(1, 9_000, 1_500), T0 + 2000, S),
        Some(QuotaEvent::Exceeded { period_bytes: 10_500, limit: 10_000 })
    );
    assert_eq!(a.observe(r(1, 20_000, 1_500), T0 + 3000, S), None, "logged and counted once");
    let st = a.status("lte");
    assert!(st.over_quota);
    assert_eq!((st.quota_bytes, st.quota_exceeded_total, st.period_bytes), (Some(10_000), 1, 21_500));
    // T0 is 2026-03-31: the next reading on April 1st starts a new period.
    let april = unix(2026, 4, 1, 0, 0, 1) * 1000;
    assert_eq!(a.observe(r(1, 20_100, 1_500), april, S), Some(QuotaEvent::PeriodReset));
    let st = a.status("lte");
    assert!(!st.over_quota);
    assert_eq!((st.period_bytes, st.period_start_unix), (100, unix(2026, 4, 1, 0, 0, 0)));
    assert_eq!((st.rx_bytes, st.tx_bytes), (20_100, 1_500), "totals go on across periods");
    assert_eq!(st.quota_exceeded_total, 1);
}

#[test]
fn a_restart_continues_the_period_or_forgets_an_old_one() {
    let start = period_start(T0 / 1000, 1);
    let saved = Totals {
        rx_bytes: 9_000,
        tx_bytes: 1_000,
        period_bytes: 10_000,
        period_start_unix: start,
        over_quota: true,
        quota_exceeded: 1,
    };
    let mut a = Account::new(saved, quota(10_000, QuotaAction::Off));
    assert_eq!(a.roll_period(T0 / 1000), None);
    assert!(a.totals.over_quota, "same period: still over quota");
    assert_eq!(a.observe(r(3, 77, 77), T0, S), None, "no second crossing");
    let older = Totals { period_start_unix: period_start(T0 / 1000 - 40 * 86_400, 1), ..saved };
    let mut a = Account::new(older, quota(10_000, QuotaAction::Off));
    assert_eq!(a.roll_period(T0 / 1000), Some(QuotaEvent::PeriodReset));
    assert!(!a.totals.over_quota);
    assert_eq!(a.totals.period_bytes, 0);
    // The clock goes back (before NTP): the period and its volume stay.
    let mut a = Account::new(saved, quota(10_000, QuotaAction::Off));
    assert_eq!(a.observe(r(3, 0, 0), 86_400_000, S), None);
    assert_eq!((a.totals.period_start_unix, a.totals.period_bytes, a.totals.over_quota), (start, 10_000, true));
    // Quota removed from the config: not over quota any more.
    assert!(!Account::new(saved, None).status("lte").over_quota);
    let mut fresh = Account::new(Totals::default(), None);
    assert_eq!(fresh.roll_period(T0 / 1000), None, "a first period is no reset");
    assert_eq!(fresh.totals.period_start_unix, start);
}

#[test]
fn state_file_round_trip_and_atomic_replace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/volume.json");
    assert_eq!(StateFile::load(&path).unwrap().uplinks.len(), 0, "missing file = empty state");
    let mut st = StateFile { version: 1, uplinks: BTreeMap::new() };
    st.uplinks.insert(
        "lte".into(),
        Totals { rx_bytes: 1, tx_bytes: 2, period_bytes: 3, period_start_unix: 4, over_quota: true, quota_exceeded: 5 },
    );
    st.save(&path).unwrap();
    st.uplinks.get_mut("lte").unwrap().rx_bytes = 10;
    st.save(&path).unwrap();
    assert_eq!(StateFile::load(&path).unwrap(), st);
    let names: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("volume.json")], "no temporary file left");
    std::fs::write(&path, "{ not json").unwrap();
    assert!(matches!(StateFile::load(&path), Err(VolumeError::Parse { .. })));
}

#[test]
fn quota_mode_while_over_and_the_configured_mode_after() {
    let (b, a) = (Some(Mode::Backup), Mode::Active);
    assert_eq!(quota_target(true, false, b, a), Some(Mode::Backup), "crossed: switch");
    assert_eq!(quota_target(true, true, b, a), None, "in force: leave it (also an admin's change)");
    assert_eq!(quota_target(false, true, b, a), Some(Mode::Active), "new period: back to the config");
    assert_eq!(quota_target(false, false, b, a), None, "under quota: never touch the mode");
    assert_eq!(quota_target(true, false, None, a), None, "no quota configured");
}

/// Records the modes asked for.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Mode)>>, tokio::sync::Notify);

impl ModeSwitch for Recorder {
    fn set_mode<'a>(
        &'a self,
        uplink: &'a str,
        mode: Mode,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        self.0.lock().unwrap().push((uplink.to_owned(), mode));
        self.1.notify_one();
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn tracker_reapplies_a_persisted_quota_mode_and_saves_on_shutdown() {
    let now = now_unix_ms() / 1000;
    let text = BASE.replace("interface: lte0", "interface: lte0\n    quota: { limit: 1MiB, action: off }")
        + "volume: { state_file: volume.json }\n";
    let (d, c) = parse_in_dir(&text);
    let c = c.unwrap();
    let over = Totals {
        rx_bytes: 2 << 20,
        tx_bytes: 0,
        period_bytes: 2 << 20,
        period_start_unix: period_start(now, 1),
        over_quota: true,
        quota_exceeded: 1,
    };
    let mut st = StateFile { version: 1, uplinks: BTreeMap::new() };
    st.uplinks.insert("lte".into(), over);
    st.save(&d.path().join("volume.json")).unwrap();

    let rec = Arc::new(Recorder::default());
    let tracker = VolumeTracker::start_with(&c.volume, &c.uplinks, rec.clone());
    // Event, not time: the quota mode is asked for before the first poll.
    tokio::time::timeout(Duration::from_secs(30), rec.1.notified()).await.expect("quota mode asked for");
    let snap = tracker.handle().snapshot();
    assert_eq!(snap.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["dsl", "lte"]);
    assert!(snap[1].over_quota && !snap[0].over_quota);
    assert_eq!((snap[1].rx_bytes, snap[1].quota_bytes, snap[1].quota_exceeded_total), (2 << 20, Some(1 << 20), 1));
    assert_eq!(*rec.0.lock().unwrap(), vec![("lte".to_owned(), Mode::Off)]);
    tracker.shutdown().await;
    let saved = StateFile::load(&d.path().join("volume.json")).unwrap();
    assert_eq!(saved.uplinks["lte"].rx_bytes, 2 << 20);
    assert!(saved.uplinks["lte"].over_quota);
    assert!(saved.uplinks.contains_key("dsl"));
}
