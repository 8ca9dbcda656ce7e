//! Carrier of each uplink's interface, fed to its prober so a lost carrier makes the uplink Down at once
//! (carrier loss acts at once) instead of after `down_after` missed probes.
//!
//! The driver learns carrier changes from the rtnetlink link events ([`super::links`]) and polls the link
//! flags once per probe interval only when the event socket could not be opened.
//!
//! Invariant: an interface that is missing counts as no carrier.

use netlink_packet_route::link::LinkFlags;

/// Whether the link flags say the interface is administratively up and has a carrier.
pub fn has_carrier(flags: LinkFlags) -> bool {
    flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp)
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
