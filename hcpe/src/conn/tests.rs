use super::to_hag::race;
use super::*;

#[test]
fn connections_are_listed_while_their_guard_lives_and_found_by_token() {
    let t = Arc::new(Connections::default());
    let (client, dest) = ("192.168.1.2:40000".parse().unwrap(), "198.18.4.2:80".parse().unwrap());
    let a = t.insert(client, dest);
    let b = t.insert(client, dest);
    a.conn().token.set(Some(7)).unwrap();
    b.conn().token.set(None).unwrap();
    assert!(b.conn().fallback(), "plain TCP to hag");
    assert!(!a.conn().fallback());
    assert_eq!(t.by_conn_id(ConnId::Token(7)).map(|c| c.seq), Some(a.conn().seq));
    assert!(t.by_conn_id(ConnId::Token(8)).is_none());
    assert_eq!(b.conn().conn_id(), ConnId::Seq(b.conn().seq), "plain TCP: named by its number");
    let seqs: Vec<u64> = t.snapshot().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [a.conn().seq, b.conn().seq]);
    drop(a);
    assert_eq!(t.len(), 1);
    assert!(t.by_conn_id(ConnId::Token(7)).is_none(), "gone with its guard");
    drop(b);
    assert!(t.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_attempt_is_raced_and_the_first_to_connect_wins() {
    use tokio::time::{Instant, sleep};
    let ms = Duration::from_millis;
    let after = |d: Duration, r: io::Result<u8>| async move {
        sleep(d).await;
        r
    };
    let failed = || Err(io::Error::from(io::ErrorKind::TimedOut));
    // Fast enough: no second attempt.
    let t = Instant::now();
    let (r, w, raced) = race(after(ms(50), Ok(1)), Some((ms(150), after(ms(10), Ok(2))))).await;
    assert_eq!((r.unwrap(), w, raced, t.elapsed()), (1, 0, false, ms(50)));
    // A dead first uplink: the second starts at 150 ms and wins 40 ms later.
    let t = Instant::now();
    let (r, w, raced) = race(after(ms(5000), failed()), Some((ms(150), after(ms(40), Ok(2))))).await;
    assert_eq!((r.unwrap(), w, raced, t.elapsed()), (2, 1, true, ms(190)));
    // A slow first that still beats the second.
    let (r, w, raced) = race(after(ms(200), Ok(1)), Some((ms(150), after(ms(100), Ok(2))))).await;
    assert_eq!((r.unwrap(), w, raced), (1, 0, true));
    // The first fails at once (no route): the second starts without waiting.
    let t = Instant::now();
    let (r, w, _) = race(after(ms(1), failed()), Some((ms(150), after(ms(40), Ok(2))))).await;
    assert_eq!((r.unwrap(), w, t.elapsed()), (2, 1, ms(41)));
    // Both fail: the first attempt's error.
    let (r, w, _) = race(after(ms(300), failed()), Some((ms(150), after(ms(10), Err(io::Error::other("x")))))).await;
    assert_eq!((r.unwrap_err().kind(), w), (io::ErrorKind::TimedOut, 0));
    // No partner: the first alone.
    let (r, w, raced) = race(after(ms(500), Ok(1)), None::<(Duration, std::future::Ready<io::Result<u8>>)>).await;
    assert_eq!((r.unwrap(), w, raced), (1, 0, false));
}

#[test]
fn refusals_are_counted_by_code() {
    let c = ConnCounters::default();
    c.refused_with(convert::ErrorCode::NotAuthorized);
    c.refused_with(convert::ErrorCode::Unknown(200));
    assert_eq!(c.refused.load(Relaxed), 2);
    let at = |code| ERROR_CODES.iter().position(|x| *x == code).unwrap();
    assert_eq!(c.refused_by_code[at(convert::ErrorCode::NotAuthorized)].load(Relaxed), 1);
    assert_eq!(c.refused_by_code[ERROR_CODES.len() - 1].load(Relaxed), 1, "unassigned codes share the last slot");
}
