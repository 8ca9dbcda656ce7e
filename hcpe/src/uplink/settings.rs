//! Uplink manager settings as written in the config file: each uplink's role and mode, and the probe timers.
//! `crate::config` embeds these types; their validation lives here so the config file's owner only calls
//! [`validate_uplinks`].
//!
//! Defaults: the first uplink is the primary and `active` (one MPTCP endpoint with the `subflow` flag), the
//! others secondary and `adaptive` (the path controller makes them `active` or `backup`); probes every 200 ms,
//! down after 3 misses, up after 3 answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytesize::ByteSize;
use common::config::{self as cfg, ConfigError};
use serde::{Deserialize, Deserializer, Serialize};

/// Which uplink new connections start on while it is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Carries the initial subflow of new connections while it is healthy.
    Primary,
    /// Takes over new connections at once when no primary is healthy.
    Secondary,
}

/// How the uplink takes part in MPTCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// An endpoint with the `subflow` flag: every connection uses it.
    #[default]
    Active,
    /// `subflow` + `backup`: a subflow exists but carries data only when the non-backup ones cannot.
    Backup,
    /// No subflow while an `active` or `backup` uplink is healthy (RFC 8041 single-path mode).
    Standby,
    /// Never used.
    Off,
    /// `active` while the uplink helps the aggregate, `backup` while it would drag it below the best other
    /// uplink (its round trip or loss far worse); decided by the path controller ([`super::adapt`]).
    Adaptive,
    /// `backup` until every `active` uplink is saturated (its queue fills), then `active` until they have room
    /// again: metered volume is spent only when it buys throughput (RFC 8157's overflow).
    Overflow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Active => "active",
            Mode::Backup => "backup",
            Mode::Standby => "standby",
            Mode::Off => "off",
            Mode::Adaptive => "adaptive",
            Mode::Overflow => "overflow",
        }
    }

    /// What the path controller does with an uplink in this mode.
    pub fn policy(self) -> super::adapt::Policy {
        use super::adapt::Policy;
        match self {
            Mode::Active => Policy::Pinned { carries: true },
            Mode::Backup | Mode::Standby | Mode::Off => Policy::Pinned { carries: false },
            Mode::Adaptive => Policy::Adaptive,
            Mode::Overflow => Policy::Overflow,
        }
    }

    /// The pinned mode the uplink behaves as when the path controller has it carry traffic or not.
    pub fn effective(self, carry: super::adapt::Carry) -> Mode {
        use super::adapt::Carry;
        match (self, carry) {
            (Mode::Adaptive | Mode::Overflow, Carry::Active) => Mode::Active,
            (Mode::Adaptive | Mode::Overflow, Carry::Backup) => Mode::Backup,
            (m, _) => m,
        }
    }
}

/// An uplink's local address in one family as configured: fixed, or `auto` (also when the key is absent):
/// learned from the interface and followed when it changes (an LTE modem renumbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UplinkAddress<A> {
    /// Learned from the uplink's interface (its first global address of the family).
    Auto,
    /// This address; connections to hag over this uplink bind to it.
    Fixed(A),
}

impl<A> UplinkAddress<A> {
    /// `auto` (serde default of an absent `address:` key).
    pub fn auto() -> Self {
        UplinkAddress::Auto
    }
}

impl<A: Copy> UplinkAddress<A> {
    /// The configured address, `None` for `auto`.
    pub fn fixed(self) -> Option<A> {
        match self {
            UplinkAddress::Fixed(a) => Some(a),
            UplinkAddress::Auto => None,
        }
    }
}

impl<A: std::fmt::Display> std::fmt::Display for UplinkAddress<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UplinkAddress::Auto => f.write_str("auto"),
            UplinkAddress::Fixed(a) => a.fmt(f),
        }
    }
}

impl<'de, A: Deserialize<'de>> Deserialize<'de> for UplinkAddress<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "auto" {
            return Ok(UplinkAddress::Auto);
        }
        A::deserialize(serde::de::value::StringDeserializer::<D::Error>::new(text)).map(UplinkAddress::Fixed)
    }
}

/// Health probing of every uplink towards hag (UDP on the hag service port).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeFile {
    /// Probe and manage uplinks at all. `false`: no probes, no endpoints or uplink routes are touched, and new
    /// connections start on the first uplink (the behaviour before the uplink manager).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Time between probes on each uplink.
    #[serde(with = "cfg::duration", default = "default_interval")]
    pub interval: Duration,
    /// Consecutive unanswered probes that make an uplink down.
    #[serde(default = "default_three")]
    pub down_after: u32,
    /// Consecutive answered probes that make an uplink up again.
    #[serde(default = "default_three")]
    pub up_after: u32,
}

impl Default for ProbeFile {
    fn default() -> Self {
        ProbeFile { enabled: true, interval: default_interval(), down_after: 3, up_after: 3 }
    }
}

fn default_true() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_three() -> u32 {
    3
}

/// Default role by position: the first uplink is the primary, the others secondary.
pub fn default_role(index: usize) -> Role {
    if index == 0 { Role::Primary } else { Role::Secondary }
}

/// Default mode by role: the primary carries traffic (`active`); a secondary uplink carries it while it helps
/// the aggregate (`adaptive`): on the testbed this never did worse than `active` and kept a poor second link
/// from dragging the aggregate below the primary alone (BENCHMARKS.md, "Multipath").
pub fn default_mode(role: Role) -> Mode {
    match role {
        Role::Primary => Mode::Active,
        Role::Secondary => Mode::Adaptive,
    }
}

/// Default routing table of uplink `index`: right after hcpe's interception table.
pub fn default_table(intercept_table: u32, index: usize) -> u32 {
    intercept_table + 1 + index as u32
}

/// Checks the uplink-manager part of the config: `tables[i]` is uplink i's resolved table id.
pub fn validate_uplinks(
    modes: &[Mode],
    tables: &[u32],
    intercept_table: u32,
    probe: &ProbeFile,
) -> Result<(), ConfigError> {
    if !modes.is_empty() && modes.iter().all(|m| *m == Mode::Off) {
        return Err(ConfigError::invalid("uplinks", "every uplink is `off`"));
    }
    for (i, t) in tables.iter().enumerate() {
        let field = format!("uplinks[{i}].table");
        if *t == 0 || (253..=255).contains(t) {
            return Err(ConfigError::invalid(field, "0, 253, 254 and 255 are the kernel's tables"));
        }
        if *t == intercept_table {
            return Err(ConfigError::invalid(field, "is routing.table (the interception table)"));
        }
        if tables[..i].contains(t) {
            return Err(ConfigError::invalid(field, format!("table {t} is used by another uplink")));
        }
    }
    if probe.interval < Duration::from_millis(10) {
        return Err(ConfigError::invalid("probe.interval", "must be at least 10ms"));
    }
    if probe.down_after == 0 {
        return Err(ConfigError::invalid("probe.down_after", "must be at least 1"));
    }
    if probe.up_after == 0 {
        return Err(ConfigError::invalid("probe.up_after", "must be at least 1"));
    }
    Ok(())
}

/// An uplink's address and gateway in one family.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkFamily<A> {
    /// Local address on the uplink interface; connections to hag over this uplink bind to it. `auto` (or
    /// absent): learned from the interface and followed when it changes (the uplink manager needs
    /// `probe.enabled` for that).
    #[serde(default = "UplinkAddress::auto")]
    pub address: UplinkAddress<A>,
    pub gateway: Option<A>,
}

/// An uplink, validated.
#[derive(Debug, Clone)]
pub struct Uplink {
    pub name: String,
    pub interface: String,
    pub ipv4: Option<UplinkFamily<Ipv4Addr>>,
    pub ipv6: Option<UplinkFamily<Ipv6Addr>>,
    pub role: Role,
    pub mode: Mode,
    pub table: u32,
    pub quota: Option<QuotaFile>,
}

impl Uplink {
    /// This uplink's local address in the family of `peer`.
    pub fn source_for(&self, peer: IpAddr) -> Option<IpAddr> {
        match peer {
            IpAddr::V4(_) => self.ipv4.and_then(|f| f.address.fixed()).map(IpAddr::V4),
            IpAddr::V6(_) => self.ipv6.and_then(|f| f.address.fixed()).map(IpAddr::V6),
        }
    }

    /// Whether this uplink has (or will learn) an address of `peer`'s family.
    pub fn has_family(&self, peer: IpAddr) -> bool {
        match peer {
            IpAddr::V4(_) => self.ipv4.is_some(),
            IpAddr::V6(_) => self.ipv6.is_some(),
        }
    }
}

/// `uplinks[].quota`: a monthly volume limit for one uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaFile {
    /// Bytes per period, received plus sent: a number of bytes or a size like `20GiB`, `500MB`.
    pub limit: ByteSize,
    /// Day of the month (1..=28) on which a new period starts, at 00:00 UTC.
    #[serde(default = "default_reset_day")]
    pub reset_day: u8,
    /// Mode the uplink drops to while over quota.
    #[serde(default)]
    pub action: QuotaAction,
}

/// What happens to an uplink over its quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaAction {
    /// Keep the subflow but with the backup flag: used only when nothing else works.
    #[default]
    Backup,
    /// No endpoint at all until the period ends.
    Off,
}

impl QuotaAction {
    /// The uplink mode this action sets.
    pub fn mode(self) -> Mode {
        match self {
            QuotaAction::Backup => Mode::Backup,
            QuotaAction::Off => Mode::Off,
        }
    }
}

fn default_reset_day() -> u8 {
    1
}

/// Checks `uplinks[index].quota`.
pub fn validate_quota(index: usize, q: &QuotaFile) -> Result<(), ConfigError> {
    if q.limit.as_u64() == 0 {
        return Err(ConfigError::invalid(format!("uplinks[{index}].quota.limit"), "must be more than 0 bytes"));
    }
    if !(1..=28).contains(&q.reset_day) {
        return Err(ConfigError::invalid(
            format!("uplinks[{index}].quota.reset_day"),
            "must be 1..=28 (a day every month has)",
        ));
    }
    Ok(())
}

/// What the uplink manager needs from the config (`Config::uplink_settings` builds it).
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    pub uplinks: Vec<Uplink>,
    /// hag's service address the probes and connections go to (the first configured).
    pub hag: SocketAddr,
    pub cpe_id: String,
    /// The key that authenticates probes.
    pub key: Vec<u8>,
    pub probe: ProbeFile,
    /// Priority of the `from <src> lookup <table>` rules.
    pub rule_priority: u32,
    /// Keep the main table's default route on the best uplink.
    pub default_route: bool,
    /// The path controller's limits (`adaptive` and `overflow` uplinks).
    pub path_control: super::adapt::PathControlFile,
}
