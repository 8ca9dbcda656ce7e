//! The uplink manager's decisions as pure functions (sans-IO): from each uplink's role, mode and health to
//! (a) the MPTCP endpoint it should have and (b) the uplink new connections start on.
//!
//! Invariants:
//! - a `Down` uplink, an `off` one and one without a source address have no endpoint;
//! - a `standby` uplink gets an endpoint only while no `active`/`backup` uplink is usable, and then a plain
//!   `subflow` one (it is the only path left, so it must carry data);
//! - `Unknown` (no verdict yet, right after start) counts as usable: at start hcpe behaves as it did without
//!   probes, and a dead uplink is dropped after `down_after` probes;
//! - [`pick_initial`] never picks a `Down` uplink while another usable one exists, puts uplinks on trial last,
//!   then ranks by mode, puts an uplink where MPTCP is stripped after others of its mode, prefers the primary
//!   role, then configuration order;
//! - an uplink whose joins fail has no endpoint (no join SYNs into a network that strips MPTCP).

use common::pm::EndpointFlags;
use common::probe::HealthState;

use super::settings::{Mode, Role};

/// What the decisions need to know about one uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub role: Role,
    /// The mode it behaves as now: an `adaptive` or `overflow` uplink as `active` or `backup`, as the path
    /// controller has it ([`Mode::effective`]).
    pub mode: Mode,
    pub health: HealthState,
    /// On trial after a failure its subflows showed: usable, but last in line for new connections.
    pub trial: bool,
    /// Connections starting on it fall back to plain TCP: new connections start elsewhere first.
    pub stripped: bool,
    /// Joins over it fail: no endpoint.
    pub joins_blocked: bool,
    /// The uplink has a local address (of the family in question).
    pub has_source: bool,
}

impl View {
    pub fn usable(&self) -> bool {
        self.has_source && self.mode != Mode::Off && self.health != HealthState::Down
    }
}

/// The endpoint flags each uplink should have now (`None`: no endpoint), index for index.
pub fn endpoint_plan(uplinks: &[View]) -> Vec<Option<EndpointFlags>> {
    let regular_usable = uplinks.iter().any(|u| u.usable() && !matches!(u.mode, Mode::Standby | Mode::Off));
    uplinks
        .iter()
        .map(|u| {
            if !u.usable() || u.joins_blocked {
                return None;
            }
            match u.mode {
                Mode::Active | Mode::Adaptive => Some(EndpointFlags::SUBFLOW),
                Mode::Backup | Mode::Overflow => Some(EndpointFlags::SUBFLOW | EndpointFlags::BACKUP),
                Mode::Standby if !regular_usable => Some(EndpointFlags::SUBFLOW),
                Mode::Standby | Mode::Off => None,
            }
        })
        .collect()
}

/// The uplink whose address new connections bind to (their initial subflow), or `None` when no uplink has
/// a source address or every one is `off`.
///
/// Order: usable before down, proven before on trial; among those, `active` before `backup` before `standby` (a
/// standby or backup uplink only starts connections when nothing better works), then one where MPTCP gets
/// through before one where it is stripped, then the primary role, then configuration order. When every uplink is down, the best by role is still returned: a connection attempt
/// on it is better than none, and probes may simply be blocked.
pub fn pick_initial(uplinks: &[View]) -> Option<usize> {
    rank(uplinks).first().copied()
}

/// Every uplink a connection may start on (a source address, not `off`), best first, in [`pick_initial`]'s
/// order; a connection's second attempt goes to the next usable one ([`race_partner`]).
pub fn rank(uplinks: &[View]) -> Vec<usize> {
    let mode_rank = |m: Mode| match m {
        Mode::Active | Mode::Adaptive => 0,
        Mode::Backup | Mode::Overflow => 1,
        Mode::Standby => 2,
        Mode::Off => 3,
    };
    let role_rank = |r: Role| match r {
        Role::Primary => 0,
        Role::Secondary => 1,
    };
    let mut order: Vec<usize> =
        (0..uplinks.len()).filter(|i| uplinks[*i].has_source && uplinks[*i].mode != Mode::Off).collect();
    order.sort_by_key(|i| {
        let u = &uplinks[*i];
        (!u.usable(), u.trial, mode_rank(u.mode), u.stripped, role_rank(u.role), *i)
    });
    order
}

/// The uplink a slow first attempt on `first` is raced against: the best-ranked other usable uplink.
pub fn race_partner(uplinks: &[View], first: usize) -> Option<usize> {
    rank(uplinks).into_iter().find(|i| *i != first && uplinks[*i].usable())
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::{Down, Unknown, Up};

    const SUB: Option<EndpointFlags> = Some(EndpointFlags::SUBFLOW);
    const BAK: Option<EndpointFlags> =
        Some(EndpointFlags::from_bits(EndpointFlags::SUBFLOW.bits() | EndpointFlags::BACKUP.bits()));

    fn v(role: Role, mode: Mode, health: HealthState) -> View {
        View { role, mode, health, trial: false, stripped: false, joins_blocked: false, has_source: true }
    }
    fn dsl(mode: Mode, h: HealthState) -> View {
        v(Role::Primary, mode, h)
    }
    fn lte(mode: Mode, h: HealthState) -> View {
        v(Role::Secondary, mode, h)
    }

    #[test]
    fn active_uplinks_get_subflow_endpoints_until_down() {
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Up), lte(Mode::Active, Up)]), vec![SUB, SUB]);
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Down), lte(Mode::Active, Up)]), vec![None, SUB]);
        // Just started: no verdict yet behaves like before the uplink manager existed.
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Unknown), lte(Mode::Active, Unknown)]), vec![SUB, SUB]);
    }

    #[test]
    fn backup_mode_sets_the_backup_flag_and_goes_when_down() {
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Up), lte(Mode::Backup, Up)]), vec![SUB, BAK]);
        // The backup flag stays when the active uplink dies: the kernel uses backup subflows when no other is left.
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Down), lte(Mode::Backup, Up)]), vec![None, BAK]);
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Up), lte(Mode::Backup, Down)]), vec![SUB, None]);
    }

    #[test]
    fn standby_only_when_every_regular_uplink_is_down() {
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Up), lte(Mode::Standby, Up)]), vec![SUB, None]);
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Unknown), lte(Mode::Standby, Up)]), vec![SUB, None]);
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Down), lte(Mode::Standby, Up)]), vec![None, SUB]);
        // A dead standby uplink stays without an endpoint even then.
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Down), lte(Mode::Standby, Down)]), vec![None, None]);
        // A backup uplink that works counts as regular: standby stays out.
        let three = [dsl(Mode::Active, Down), lte(Mode::Backup, Up), lte(Mode::Standby, Up)];
        assert_eq!(endpoint_plan(&three), vec![None, BAK, None]);
    }

    #[test]
    fn off_and_sourceless_uplinks_never_get_an_endpoint() {
        let mut no_src = lte(Mode::Active, Up);
        no_src.has_source = false;
        assert_eq!(endpoint_plan(&[dsl(Mode::Off, Up), no_src]), vec![None, None]);
        assert_eq!(pick_initial(&[dsl(Mode::Off, Up), no_src]), None);
    }

    #[test]
    fn initial_subflow_follows_the_healthy_primary_and_fails_over_at_once() {
        let both = |d, l| [dsl(Mode::Active, d), lte(Mode::Active, l)];
        assert_eq!(pick_initial(&both(Up, Up)), Some(0));
        assert_eq!(pick_initial(&both(Unknown, Up)), Some(0), "no verdict yet keeps the primary");
        assert_eq!(pick_initial(&both(Down, Up)), Some(1), "primary down: secondary at once");
        assert_eq!(pick_initial(&both(Down, Unknown)), Some(1));
        assert_eq!(pick_initial(&both(Up, Down)), Some(0));
        assert_eq!(pick_initial(&both(Down, Down)), Some(0), "all down: still try the primary");
    }

    #[test]
    fn a_stripped_uplink_starts_connections_only_when_nothing_else_works_and_blocked_joins_lose_the_endpoint() {
        let mut d = dsl(Mode::Active, Up);
        d.stripped = true;
        assert_eq!(pick_initial(&[d, lte(Mode::Active, Up)]), Some(1));
        assert_eq!(pick_initial(&[d, lte(Mode::Active, Down)]), Some(0));
        // A backup (metered) uplink is not worth MPTCP: plain TCP over the stripped primary comes first.
        assert_eq!(pick_initial(&[d, lte(Mode::Backup, Up)]), Some(0));
        let mut l = lte(Mode::Active, Up);
        l.joins_blocked = true;
        assert_eq!(endpoint_plan(&[dsl(Mode::Active, Up), l]), vec![SUB, None]);
        assert_eq!(pick_initial(&[dsl(Mode::Active, Down), l]), Some(1), "still a place to start");
    }

    #[test]
    fn the_race_partner_is_the_next_usable_uplink() {
        let both = |d, l| [dsl(Mode::Active, d), lte(Mode::Active, l)];
        assert_eq!(race_partner(&both(Up, Up), 0), Some(1));
        assert_eq!(race_partner(&both(Up, Down), 0), None, "never a down uplink");
        assert_eq!(race_partner(&[dsl(Mode::Active, Up), lte(Mode::Standby, Up)], 0), Some(1), "standby may race");
        assert_eq!(race_partner(&[dsl(Mode::Active, Up), lte(Mode::Off, Up)], 0), None);
        assert_eq!(race_partner(&[dsl(Mode::Active, Up)], 0), None);
    }

    #[test]
    fn role_beats_configuration_order() {
        let lte_first = [lte(Mode::Active, Up), dsl(Mode::Active, Up)];
        assert_eq!(pick_initial(&lte_first), Some(1));
    }

    #[test]
    fn standby_and_backup_start_connections_only_when_needed() {
        assert_eq!(pick_initial(&[lte(Mode::Standby, Up), dsl(Mode::Active, Up)]), Some(1));
        assert_eq!(pick_initial(&[lte(Mode::Backup, Up), dsl(Mode::Active, Up)]), Some(1));
        assert_eq!(pick_initial(&[dsl(Mode::Active, Down), lte(Mode::Standby, Up)]), Some(1));
        assert_eq!(pick_initial(&[dsl(Mode::Active, Down), lte(Mode::Backup, Up)]), Some(1));
    }

    #[test]
    fn plan_and_pick_agree_on_usable_uplinks() {
        // Exhaustive over two uplinks: the picked uplink, when usable, is one with an endpoint planned, or a
        // standby/backup one that the plan also gives an endpoint.
        let healths = [Up, Down, Unknown];
        let modes = [Mode::Active, Mode::Backup, Mode::Standby, Mode::Off];
        for &m0 in &modes {
            for &m1 in &modes {
                for &h0 in &healths {
                    for &h1 in &healths {
                        let ups = [dsl(m0, h0), lte(m1, h1)];
                        let plan = endpoint_plan(&ups);
                        if let Some(i) = pick_initial(&ups)
                            && ups[i].usable()
                        {
                            assert!(plan[i].is_some(), "{ups:?} picks {i} without an endpoint: {plan:?}");
                        }
                    }
                }
            }
        }
    }
}
