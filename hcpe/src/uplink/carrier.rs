//! Carrier of each uplink's interface, fed to its prober so a lost carrier makes the uplink Down at once
//! (issue 5: "carrier loss acts at once") instead of after `down_after` missed probes.
//!
//! `common::net` has no link event stream yet, so this polls the link flags over rtnetlink every probe
//! interval (one small request per uplink; a carrier change is seen within one interval). Replace with the
//! event stream when it exists.
//!
//! Invariant: a carrier value is sent only when it changes; an interface that is missing counts as no carrier.

use std::time::Duration;

use futures::TryStreamExt as _;
use netlink_packet_route::link::LinkFlags;
use tokio::sync::watch;

/// Whether the link flags say the interface is administratively up and has a carrier.
pub fn has_carrier(flags: LinkFlags) -> bool {
    flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp)
}

/// Polls every `interval` until every sender's prober is gone.
pub async fn watch_carrier(handle: rtnetlink::Handle, links: Vec<(String, watch::Sender<bool>)>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if links.iter().all(|(_, tx)| tx.is_closed()) {
            return;
        }
        for (name, tx) in &links {
            let up = match handle.link().get().match_name(name.clone()).execute().try_next().await {
                Ok(Some(msg)) => has_carrier(msg.header.flags),
                Ok(None) | Err(_) => false,
            };
            tx.send_if_modified(|cur| {
                let changed = *cur != up;
                *cur = up;
                changed
            });
            if !up {
                tracing::debug!(interface = %name, "no carrier");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carrier_needs_admin_up_and_lower_up() {
        assert!(has_carrier(LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running));
        assert!(!has_carrier(LinkFlags::Up), "NO-CARRIER: up but lower layer down");
        assert!(!has_carrier(LinkFlags::LowerUp), "administratively down");
    }
}
