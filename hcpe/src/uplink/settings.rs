//! Uplink manager settings as written in the config file: each uplink's role and mode, and the probe timers.
//! `crate::config` embeds these types; their validation lives here so the config file's owner only calls
//! [`validate_uplinks`].
//!
//! Defaults keep the behaviour of a config written before these keys existed: the first uplink is the primary,
//! every uplink is `active` (one MPTCP endpoint with the `subflow` flag), probes every 200 ms, down after 3
//! misses, up after 3 answers.

use std::time::Duration;

use common::config::{self as cfg, ConfigError};
use serde::{Deserialize, Deserializer};

/// Which uplink new connections start on while it is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Carries the initial subflow of new connections while it is healthy.
    Primary,
    /// Takes over new connections at once when no primary is healthy.
    Secondary,
}

/// How the uplink takes part in MPTCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
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
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Active => "active",
            Mode::Backup => "backup",
            Mode::Standby => "standby",
            Mode::Off => "off",
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::Config;

    /// Two uplinks with fixed addresses and gateways, everything else on defaults (also `volume`'s tests).
    pub(crate) const BASE: &str = r#"
lan_interfaces: [lan0]
hag: { addresses: [198.51.100.1], cpe_id: cpe-1, key_file: cpe.key }
uplinks:
  - name: dsl
    interface: dsl0
    ipv4: { address: 192.0.2.2, gateway: 192.0.2.1 }
  - name: lte
    interface: lte0
    ipv4: { address: 203.0.113.2, gateway: 203.0.113.1 }
"#;

    /// `text` parsed as `hcpe.yaml` in a scratch directory with `cpe.key`; the directory stays for paths
    /// relative to the config file.
    pub(crate) fn parse_in_dir(text: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpe.key"), "00112233445566778899aabbccddeeff").unwrap();
        let c = Config::from_yaml(text, &dir.path().join("hcpe.yaml"));
        (dir, c)
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_in_dir(text).1
    }

    #[test]
    fn defaults_keep_the_old_behaviour() {
        let c = parse(BASE).unwrap();
        assert_eq!((c.uplinks[0].role, c.uplinks[1].role), (Role::Primary, Role::Secondary));
        assert_eq!((c.uplinks[0].mode, c.uplinks[1].mode), (Mode::Active, Mode::Active));
        assert_eq!((c.uplinks[0].table, c.uplinks[1].table), (5125, 5126));
        assert_eq!(c.probe, ProbeFile::default());
        assert_eq!((c.probe.interval, c.probe.down_after, c.probe.up_after), (Duration::from_millis(200), 3, 3));
    }

    #[test]
    fn explicit_role_mode_table_and_probe_timers() {
        let text = BASE
            .replace("interface: lte0", "interface: lte0\n    role: primary\n    mode: backup\n    table: 200")
            + "probe: { interval: 100ms, down_after: 2, up_after: 5 }\n";
        let c = parse(&text).unwrap();
        assert_eq!((c.uplinks[1].role, c.uplinks[1].mode, c.uplinks[1].table), (Role::Primary, Mode::Backup, 200));
        assert_eq!(
            c.probe,
            ProbeFile { enabled: true, interval: Duration::from_millis(100), down_after: 2, up_after: 5 }
        );
        for mode in ["active", "backup", "standby", "off"] {
            let t = BASE.replace("interface: lte0", &format!("interface: lte0\n    mode: {mode}"));
            assert_eq!(parse(&t).unwrap().uplinks[1].mode.as_str(), mode);
        }
    }

    #[test]
    fn uplink_address_is_fixed_or_learned() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let c = parse(BASE).unwrap();
        assert_eq!(c.uplinks[1].ipv4.unwrap().address, UplinkAddress::Fixed(Ipv4Addr::new(203, 0, 113, 2)));
        for (text, what) in [
            (BASE.replace("address: 203.0.113.2, ", "address: auto, "), "auto"),
            (BASE.replace("address: 203.0.113.2, ", ""), "absent"),
        ] {
            let c = parse(&text).unwrap();
            let lte = &c.uplinks[1];
            assert_eq!(lte.ipv4.unwrap().address, UplinkAddress::Auto, "{what}");
            assert_eq!(lte.ipv4.unwrap().gateway, Some(Ipv4Addr::new(203, 0, 113, 1)), "{what}");
            assert_eq!(lte.source_for("198.51.100.1".parse().unwrap()), None, "{what}: nothing to bind to yet");
            assert_eq!(lte.ipv4.unwrap().address.to_string(), "auto");
        }
        let v6 = BASE.replace("interface: lte0", "interface: lte0\n    ipv6: { address: auto }");
        assert_eq!(parse(&v6).unwrap().uplinks[1].ipv6.unwrap().address, UplinkAddress::<Ipv6Addr>::Auto);
        // Only learned addresses, of the hag's family: still a valid config (the address comes later).
        let only_auto = BASE.replace("address: 192.0.2.2, ", "").replace("address: 203.0.113.2, ", "");
        assert!(parse(&only_auto).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (BASE.replace("address: 203.0.113.2", "address: automatic"), "uplinks[1].ipv4.address"),
            (BASE.replace("interface: lte0", "interface: lte0\n    mode: sometimes"), "uplinks[1].mode"),
            (BASE.replace("interface: lte0", "interface: lte0\n    role: tertiary"), "uplinks[1].role"),
            (BASE.replace("interface: lte0", "interface: lte0\n    table: 5125"), "uplinks[1].table"),
            (BASE.replace("interface: dsl0", "interface: dsl0\n    table: 254"), "uplinks[0].table"),
            (BASE.replace("interface: dsl0", "interface: dsl0\n    table: 5124"), "uplinks[0].table"),
            (
                BASE.replace("interface: dsl0", "interface: dsl0\n    mode: off")
                    .replace("interface: lte0", "interface: lte0\n    mode: off"),
                "uplinks",
            ),
            (format!("{BASE}probe: {{ down_after: 0 }}\n"), "probe.down_after"),
            (format!("{BASE}probe: {{ up_after: 0 }}\n"), "probe.up_after"),
            (format!("{BASE}probe: {{ interval: 1ms }}\n"), "probe.interval"),
            (format!("{BASE}probe: {{ colour: red }}\n"), "probe.colour"),
        ];
        for (text, field) in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
        }
    }
}
