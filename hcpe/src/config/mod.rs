//! hcpe configuration: the YAML file's shape ([`FileConfig`]), its validation, and the resolved [`Config`]
//! the daemon runs with (key read from its file, hag addresses with the default port filled in).
//!
//! Invariants:
//! - A [`Config`] is only built by [`Config::from_file`] / [`Config::from_yaml`], i.e. it passed validation:
//!   at least one LAN interface, one uplink and one hag address; the TUN has an address of every family an
//!   uplink and a hag address share; the key is readable and long enough; the CPE id is 1..=64 bytes.
//! - Every error names the field path (see `common::config`), and no error or `Debug` output shows the key.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::config::{self as cfg, ConfigError};
use common::mptcp::CongestionControl;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::uplink::adapt::PathControlFile;
use crate::uplink::settings::ManagerSettings;
use crate::uplink::settings::{self as uplink_settings, QuotaFile};
pub use crate::uplink::settings::{Uplink, UplinkFamily};
use crate::uplink::volume::{self, VolumeFile};
use crate::uplink::{self, Mode, ProbeFile, Role};

/// Default HAG service port (DESIGN §3).
pub const DEFAULT_HAG_PORT: u16 = 5124;
/// Longest CPE id the Auth TLV can carry.
pub const MAX_CPE_ID_LEN: usize = 64;
/// Default port of the admin REST API (loopback unless configured otherwise).
pub const DEFAULT_ADMIN_PORT: u16 = 5126;

/// The `admin:` section: listen addresses (default `127.0.0.1:5126`), token file, limits.
pub type AdminConfig = common::admin::AdminConfig<DEFAULT_ADMIN_PORT>;

/// The config file as written (`deny_unknown_fields` everywhere).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// LAN interfaces whose TCP is intercepted.
    pub lan_interfaces: Vec<String>,
    #[serde(default)]
    pub tun: TunFile,
    pub hag: HagFile,
    /// Uplinks in order of preference; the first healthy one carries the initial subflow.
    pub uplinks: Vec<UplinkFile>,
    /// Destinations that are never intercepted (in addition to the hag addresses and the LAN subnets).
    #[serde(default)]
    pub bypass: Vec<IpNet>,
    /// What to do when hag cannot be reached or the Convert exchange fails.
    #[serde(default)]
    pub fallback: Fallback,
    #[serde(default)]
    pub routing: RoutingFile,
    #[serde(default)]
    pub limits: LimitsFile,
    /// Racing a second attempt to hag over the next uplink when the first is slow to connect.
    #[serde(default)]
    pub race: RaceFile,
    /// Uplink health probes towards hag (uplink manager).
    #[serde(default)]
    pub probe: ProbeFile,
    /// The limits of the path controller, which demotes and promotes `adaptive` and `overflow` uplinks.
    #[serde(default)]
    pub path_control: PathControlFile,
    /// Volume counting per uplink and its state file (quota: `uplinks[].quota`).
    #[serde(default)]
    pub volume: VolumeFile,
    /// Reject LAN UDP to port 443 (QUIC) with ICMP port unreachable, so browsers fall back to TCP, which
    /// hcpe carries over every uplink. Needs the `nft` tool.
    #[serde(default)]
    pub block_quic: bool,
    /// tracing filter directive; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Admin REST API and status page; absent = none.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// A key or token file the group or other users can read: refuse the config (default) or warn.
    #[serde(default)]
    pub secret_files: cfg::SecretFiles,
}

/// The TUN device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunFile {
    #[serde(default = "default_tun_name")]
    pub name: String,
    /// TUN address and prefix; the rest of the subnet is the NAT's fake source pool. `null` disables IPv4.
    #[serde(default = "default_tun_v4")]
    pub ipv4: Option<Ipv4Net>,
    #[serde(default = "default_tun_v6")]
    pub ipv6: Option<Ipv6Net>,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Port of the local listeners on the TUN addresses.
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    /// Use GSO/GRO offload (virtio-net header) when the kernel supports it; on by default. hcpe then reads
    /// whole GSO super-packets (up to 64 KiB), rewrites them in place and writes them back whole: about a
    /// sixth of the CPU per Gbit of `false`, which reads and writes every MTU-sized segment.
    #[serde(default = "default_offload")]
    pub offload: bool,
    /// TUN queues (multi-queue when > 1 and supported).
    #[serde(default = "default_queues")]
    pub queues: usize,
}

impl Default for TunFile {
    fn default() -> Self {
        TunFile {
            name: default_tun_name(),
            ipv4: default_tun_v4(),
            ipv6: default_tun_v6(),
            mtu: default_mtu(),
            listen_port: default_listen_port(),
            offload: default_offload(),
            queues: default_queues(),
        }
    }
}

/// Where the hag is and who we are to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HagFile {
    /// hag service addresses; a bare address gets port 5124.
    pub addresses: Vec<String>,
    /// CPE id sent in the Auth TLV (1..=64 bytes).
    pub cpe_id: String,
    /// File with the shared secret (hex text or raw bytes); relative to this config file.
    pub key_file: PathBuf,
    /// Send the Convert request (and the client's first bytes) in the SYN with TCP Fast Open (0-RTT). Off by
    /// default while the kernel has the bug `tests/tests/mptcp_tfo_join.rs` reproduces (Linux 6.18; see
    /// `common::mptcp` and docs/troubleshooting.md): downloads on about half of such connections crawl.
    #[serde(default)]
    pub fastopen: bool,
    /// Ready connections to hag, held open ahead of demand (`docs/zero-rtt.md`).
    #[serde(default)]
    pub pool: PoolFile,
    /// The congestion control of the MPTCP connections to hag (every subflow; uploads): `cubic` where not set
    /// (where it can be used), `system` for the namespace's default ([`common::mptcp::CongestionControl`]).
    #[serde(default)]
    pub congestion_control: Option<CongestionControl>,
}

/// The `hag.pool` section: MPTCP connections to hag opened, authenticated (Hold TLV) and joined over every
/// uplink before a LAN client needs one, so a new LAN connection sends its request at once (0-RTT) and
/// starts on all uplinks. The pool keeps `min` ready when idle, grows by one for each LAN connection that
/// found it empty (up to `max`), and shrinks by one every 10 s without such a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolFile {
    /// Ready connections kept when idle.
    pub min: usize,
    /// Most ready connections after a burst; 0 turns the pool off. Keep it at or below hag's
    /// `limits.max_held_per_cpe` (64 by default).
    pub max: usize,
    /// A ready connection older than this is closed and replaced (keep it below hag's `limits.hold_timeout`,
    /// 90 s by default).
    #[serde(with = "cfg::duration")]
    pub max_age: Duration,
}

impl Default for PoolFile {
    fn default() -> Self {
        PoolFile { min: 4, max: 32, max_age: Duration::from_secs(60) }
    }
}

impl PoolFile {
    /// Whether the pool runs at all.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }
}

/// One uplink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkFile {
    pub name: String,
    pub interface: String,
    #[serde(default)]
    pub ipv4: Option<UplinkFamily<Ipv4Addr>>,
    #[serde(default)]
    pub ipv6: Option<UplinkFamily<Ipv6Addr>>,
    /// Default: the first uplink is the primary, the others secondary.
    #[serde(default)]
    pub role: Option<Role>,
    /// Default: `active` for the primary, `adaptive` for a secondary uplink.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Routing table of the uplink's source-based routing; default `routing.table + 1 + index`.
    #[serde(default)]
    pub table: Option<u32>,
    /// Monthly volume quota; over it the uplink drops to the quota's `action` mode.
    #[serde(default)]
    pub quota: Option<QuotaFile>,
}

/// Behaviour when hag is unreachable or the Convert exchange fails (not when hag answers with an Error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Connect straight to the destination over the primary uplink, plain TCP.
    #[default]
    Direct,
    /// Reset the LAN client at once.
    Reject,
}

/// Where hcpe's routing state lives. Everything hcpe adds carries these numbers, which is how leftovers of a
/// crashed run are found and removed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// Routing table holding the route into the TUN device.
    #[serde(default = "default_table")]
    pub table: u32,
    /// Priority of the first hcpe rule; hcpe uses `rule_priority .. rule_priority + 999`.
    #[serde(default = "default_rule_priority")]
    pub rule_priority: u32,
    /// The uplink manager keeps the main table's default route (metric 0) via the gateway of the healthiest
    /// uplink by role, so non-TCP traffic (UDP, ICMP) follows a failover too. Turn off when the firmware
    /// manages the default route itself (its own multi-WAN).
    #[serde(default = "default_true")]
    pub default_route: bool,
}

impl Default for RoutingFile {
    fn default() -> Self {
        RoutingFile { table: default_table(), rule_priority: default_rule_priority(), default_route: true }
    }
}

fn default_true() -> bool {
    true
}

/// Timers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// A relay with no traffic either way is closed.
    #[serde(with = "cfg::duration", default = "default_idle")]
    pub idle_timeout: Duration,
    /// To reach hag (and, with `fallback: direct`, the destination).
    #[serde(with = "cfg::duration", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// To get hag's Convert reply.
    #[serde(with = "cfg::duration", default = "default_reply_timeout")]
    pub reply_timeout: Duration,
    /// Fake source addresses per family for the NAT (x 64512 ports each = concurrent LAN connections).
    #[serde(default = "default_pool")]
    pub nat_pool_addresses: u32,
}

/// The `race:` section. A new connection's first attempt to hag goes out on the best uplink; when its
/// handshake has not completed after `rtts` probe round trips of that uplink, clamped to `floor..=cap` (`cap`
/// while no RTT is known), a second attempt starts over the next usable uplink and the first to complete
/// carries the connection. A silently dead uplink then costs a new connection that delay instead of the whole
/// connect timeout, during the moments before its probes declare it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaceFile {
    /// Round trips to wait; 0 turns racing off.
    #[serde(default = "default_race_rtts")]
    pub rtts: u32,
    #[serde(with = "cfg::duration", default = "default_race_floor")]
    pub floor: Duration,
    #[serde(with = "cfg::duration", default = "default_race_cap")]
    pub cap: Duration,
}

impl Default for RaceFile {
    fn default() -> Self {
        RaceFile { rtts: default_race_rtts(), floor: default_race_floor(), cap: default_race_cap() }
    }
}

impl RaceFile {
    /// How long the first attempt runs alone, given its uplink's smoothed RTT; `None`: no race.
    pub fn delay(&self, srtt: Option<Duration>) -> Option<Duration> {
        if self.rtts == 0 {
            return None;
        }
        Some(srtt.map_or(self.cap, |rtt| (rtt * self.rtts).clamp(self.floor, self.cap)))
    }
}

fn default_race_rtts() -> u32 {
    3
}
fn default_race_floor() -> Duration {
    Duration::from_millis(150)
}
fn default_race_cap() -> Duration {
    Duration::from_secs(1)
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            idle_timeout: default_idle(),
            connect_timeout: default_connect_timeout(),
            reply_timeout: default_reply_timeout(),
            nat_pool_addresses: default_pool(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}
fn default_tun_name() -> String {
    "hcpe0".into()
}
fn default_tun_v4() -> Option<Ipv4Net> {
    Some("100.127.254.1/24".parse().expect("valid"))
}
fn default_tun_v6() -> Option<Ipv6Net> {
    Some("fdc9:5c1e:b7d4::1/64".parse().expect("valid"))
}
fn default_mtu() -> u16 {
    1500
}
fn default_listen_port() -> u16 {
    7000
}
fn default_offload() -> bool {
    true
}

fn default_queues() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4)
}
fn default_table() -> u32 {
    5124
}
fn default_rule_priority() -> u32 {
    5000
}
fn default_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_reply_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_pool() -> u32 {
    64
}

/// The key bytes; `Debug` never shows them.
#[derive(Clone)]
pub struct Key(pub Vec<u8>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub lan_interfaces: Vec<String>,
    pub tun: TunFile,
    pub hag_addresses: Vec<SocketAddr>,
    pub cpe_id: String,
    pub key: Key,
    pub fastopen: bool,
    pub pool: PoolFile,
    /// As configured; the daemon resolves it at start ([`CongestionControl::resolve`]).
    pub congestion_control: Option<CongestionControl>,
    pub uplinks: Vec<Uplink>,
    pub bypass: Vec<IpNet>,
    pub fallback: Fallback,
    pub routing: RoutingFile,
    pub limits: LimitsFile,
    pub race: RaceFile,
    pub probe: ProbeFile,
    pub path_control: PathControlFile,
    /// `state_file` resolved relative to the config file.
    pub volume: VolumeFile,
    /// Reject LAN UDP/443 (QUIC) so browsers use TCP.
    pub block_quic: bool,
    pub log_level: String,
    /// Admin REST API (token file already read), if configured.
    pub admin: Option<Admin>,
}

/// The validated `admin:` section with its token loaded (so `--check-config` proves the token file is usable).
pub type Admin = common::admin::AdminSection<DEFAULT_ADMIN_PORT>;

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let file: FileConfig = cfg::load_yaml(path)?;
        Config::validate(file, path)
    }

    /// Parses and validates YAML text; relative paths are taken relative to `config_path`.
    pub fn from_yaml(text: &str, config_path: &Path) -> Result<Config, ConfigError> {
        let file: FileConfig = cfg::from_yaml_str(text)?;
        Config::validate(file, config_path)
    }

    /// What the uplink manager needs.
    pub fn uplink_settings(&self) -> ManagerSettings {
        ManagerSettings {
            uplinks: self.uplinks.clone(),
            hag: self.hag_addresses[0],
            cpe_id: self.cpe_id.clone(),
            key: self.key.0.clone(),
            probe: self.probe.clone(),
            rule_priority: self.routing.rule_priority,
            default_route: self.routing.default_route,
            path_control: self.path_control.clone(),
        }
    }

    fn validate(f: FileConfig, config_path: &Path) -> Result<Config, ConfigError> {
        if f.lan_interfaces.is_empty() {
            return Err(ConfigError::invalid("lan_interfaces", "at least one LAN interface is needed"));
        }
        for (i, name) in f.lan_interfaces.iter().enumerate() {
            check_ifname(&format!("lan_interfaces[{i}]"), name)?;
        }
        check_ifname("tun.name", &f.tun.name)?;
        if f.tun.ipv4.is_none() && f.tun.ipv6.is_none() {
            return Err(ConfigError::invalid("tun", "needs an ipv4 or an ipv6 address"));
        }
        if let Some(n) = f.tun.ipv4
            && n.prefix_len() > 30
        {
            return Err(ConfigError::invalid("tun.ipv4", "prefix longer than /30 leaves no fake source addresses"));
        }
        if let Some(n) = f.tun.ipv6
            && n.prefix_len() > 126
        {
            return Err(ConfigError::invalid("tun.ipv6", "prefix longer than /126 leaves no fake source addresses"));
        }
        if f.tun.mtu < 1280 {
            return Err(ConfigError::invalid("tun.mtu", "must be at least 1280"));
        }
        if f.tun.listen_port == 0 {
            return Err(ConfigError::invalid("tun.listen_port", "must not be 0"));
        }
        if f.tun.queues == 0 {
            return Err(ConfigError::invalid("tun.queues", "must be at least 1"));
        }
        if f.hag.addresses.is_empty() {
            return Err(ConfigError::invalid("hag.addresses", "at least one hag address is needed"));
        }
        let mut hag_addresses = Vec::new();
        for (i, a) in f.hag.addresses.iter().enumerate() {
            let addr = cfg::parse_addr_with_default_port(a, DEFAULT_HAG_PORT)
                .map_err(|e| ConfigError::invalid(format!("hag.addresses[{i}]"), e))?;
            hag_addresses.push(addr);
        }
        if f.hag.cpe_id.is_empty() || f.hag.cpe_id.len() > MAX_CPE_ID_LEN {
            return Err(ConfigError::invalid("hag.cpe_id", format!("must be 1..={MAX_CPE_ID_LEN} bytes")));
        }
        let key_path = cfg::resolve_relative(config_path, &f.hag.key_file);
        let key = Key(cfg::read_secret_key("hag.key_file", &key_path, f.secret_files)?);
        if f.uplinks.is_empty() {
            return Err(ConfigError::invalid("uplinks", "at least one uplink is needed"));
        }
        let mut uplinks = Vec::new();
        for (i, u) in f.uplinks.iter().enumerate() {
            if u.name.is_empty() {
                return Err(ConfigError::invalid(format!("uplinks[{i}].name"), "must not be empty"));
            }
            if f.uplinks[..i].iter().any(|o| o.name == u.name) {
                return Err(ConfigError::invalid(format!("uplinks[{i}].name"), format!("duplicate `{}`", u.name)));
            }
            check_ifname(&format!("uplinks[{i}].interface"), &u.interface)?;
            if u.ipv4.is_none() && u.ipv6.is_none() {
                return Err(ConfigError::invalid(format!("uplinks[{i}]"), "needs an ipv4 or an ipv6 section"));
            }
            if let Some(q) = &u.quota {
                uplink_settings::validate_quota(i, q)?;
            }
            let role = u.role.unwrap_or(uplink::settings::default_role(i));
            uplinks.push(Uplink {
                name: u.name.clone(),
                interface: u.interface.clone(),
                ipv4: u.ipv4,
                ipv6: u.ipv6,
                role,
                mode: u.mode.unwrap_or(uplink::settings::default_mode(role)),
                table: u.table.unwrap_or(uplink::settings::default_table(f.routing.table, i)),
                quota: u.quota,
            });
        }
        let reachable = hag_addresses.iter().any(|h| uplinks.iter().any(|u| u.has_family(h.ip())));
        if !reachable {
            return Err(ConfigError::invalid("hag.addresses", "no uplink has an address of a hag address's family"));
        }
        if f.routing.table == 0 || (253..=255).contains(&f.routing.table) {
            return Err(ConfigError::invalid("routing.table", "0, 253, 254 and 255 are the kernel's tables"));
        }
        if f.routing.rule_priority == 0 || f.routing.rule_priority > 32000 - 1000 {
            return Err(ConfigError::invalid("routing.rule_priority", "must be in 1..=31000 (before main at 32766)"));
        }
        let modes: Vec<Mode> = uplinks.iter().map(|u| u.mode).collect();
        let tables: Vec<u32> = uplinks.iter().map(|u| u.table).collect();
        uplink::settings::validate_uplinks(&modes, &tables, f.routing.table, &f.probe)?;
        f.path_control.validate()?;
        volume::validate_volume(&f.volume)?;
        let volume = VolumeFile {
            state_file: f.volume.state_file.as_ref().map(|p| cfg::resolve_relative(config_path, p)),
            ..f.volume
        };
        if f.limits.nat_pool_addresses == 0 {
            return Err(ConfigError::invalid("limits.nat_pool_addresses", "must be at least 1"));
        }
        for (field, d) in [
            ("limits.idle_timeout", f.limits.idle_timeout),
            ("limits.connect_timeout", f.limits.connect_timeout),
            ("limits.reply_timeout", f.limits.reply_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(field, "must be more than 0"));
            }
        }
        let pool = &f.hag.pool;
        if pool.min > pool.max {
            return Err(ConfigError::invalid("hag.pool.min", "must not be above hag.pool.max"));
        }
        if pool.max > 256 {
            return Err(ConfigError::invalid("hag.pool.max", "must be at most 256"));
        }
        if pool.max_age < Duration::from_secs(1) {
            return Err(ConfigError::invalid("hag.pool.max_age", "must be at least 1s"));
        }
        if f.race.cap.is_zero() {
            return Err(ConfigError::invalid("race.cap", "must be more than 0"));
        }
        if f.race.floor > f.race.cap {
            return Err(ConfigError::invalid("race.floor", "must not be above race.cap"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&f.log_level) {
            return Err(ConfigError::invalid("log_level", e));
        }
        let admin = f.admin.map(|a| a.load("admin", config_path, f.secret_files)).transpose()?;
        Ok(Config {
            lan_interfaces: f.lan_interfaces,
            tun: f.tun,
            hag_addresses,
            cpe_id: f.hag.cpe_id,
            key,
            fastopen: f.hag.fastopen,
            congestion_control: f.hag.congestion_control,
            pool: f.hag.pool,
            uplinks,
            bypass: f.bypass,
            fallback: f.fallback,
            routing: f.routing,
            limits: f.limits,
            race: f.race,
            probe: f.probe,
            path_control: f.path_control,
            volume,
            block_quic: f.block_quic,
            log_level: f.log_level,
            admin,
        })
    }

    /// The uplink that carries initial subflows (the first one; the uplink manager will pick by health).
    pub fn primary_uplink(&self) -> &Uplink {
        &self.uplinks[0]
    }
}

fn check_ifname(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
        return Err(ConfigError::invalid(field, format!("`{name}` is not a valid interface name (1..=15 bytes)")));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
